//! The conformance suite: behaviour every backend must show, written once
//! as functions generic over [`Fixture`](crate::support::Fixture) and
//! instantiated per backend with [`conformance_tests!`].
#![allow(dead_code, unreachable_pub)]

pub mod documents;
pub mod idempotency;
pub mod projection;
pub mod rebuild;
pub mod repository;
pub mod store;
pub mod typed;
pub mod unit;
pub mod versions;

/// Generates one `#[tokio::test]` per listed test body for a fixture.
#[macro_export]
macro_rules! conformance_tests {
    ($fixture:ty; $($module:ident :: $name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $crate::conformance::$module::$name::<$fixture>().await
            }
        )*
    };
}

/// Every store test body, for a fixture.
#[macro_export]
macro_rules! store_conformance_tests {
    ($fixture:ty) => {
        $crate::conformance_tests!($fixture;
            store::append_assigns_consecutive_versions,
            store::expected_version_is_checked,
            store::a_conflict_leaves_the_transaction_usable,
            store::empty_append_is_no_events,
            store::batches_of_1_100_and_10000,
            store::optional_columns_round_trip_per_event,
            store::retried_batch_returns_the_original_result,
            store::reused_event_ids_are_refused,
            store::bad_input_is_refused_and_nothing_written,
            store::unstorable_text_is_refused_and_the_transaction_stays_usable,
            store::unstorable_names_are_refused_by_every_call_that_takes_them,
            store::names_at_the_limit_are_stored_and_longer_ones_refused,
            store::stream_reads_honour_inclusive_bounds,
            store::global_reads_page_without_overlap_or_loss,
            store::filtered_reads_run_in_the_database,
            store::checkpoints_live_in_the_callers_transaction,
            store::snapshots_keep_the_latest,
            store::checkpoint_claims_are_exclusive,
            store::failures_and_head_position,
            store::two_stores_in_one_schema_each_migrate,
            store::concurrent_exact_appends_have_one_winner_per_version,
            store::concurrent_creations_have_one_winner,
            store::concurrent_any_appends_all_succeed,
            store::concurrent_readers_never_skip_an_event,
            store::the_next_locker_sees_what_the_holder_committed,
            documents::documents_round_trip_and_page_by_id,
            documents::bad_document_input_is_refused_and_nothing_written,
            documents::concurrent_updates_lose_nothing,
            documents::documents_commit_and_roll_back_with_the_callers_transaction,
        );
    };
}

/// Every projection test body, for a fixture.
#[macro_export]
macro_rules! projection_conformance_tests {
    ($fixture:ty) => {
        $crate::conformance_tests!($fixture;
            projection::every_event_is_handled_once_in_order,
            projection::a_restarted_processor_resumes_from_its_checkpoint,
            projection::a_scoped_projection_sees_only_its_events,
            projection::concurrent_processors_of_one_projection_handle_each_event_once,
            projection::partitioned_workers_share_the_work_and_take_over,
            projection::the_stop_policy_names_the_projection_the_event_and_its_position,
            projection::the_retry_policy_retries_then_gives_up,
            projection::the_skip_policy_records_the_event_and_goes_on,
            projection::a_transient_handler_failure_is_retried_and_never_skipped,
            projection::a_whole_batch_failure_is_traced_to_its_event,
            projection::the_skip_policy_skips_nothing_it_cannot_pin_down,
            projection::a_rebuild_resets_and_replays,
            projection::a_page_handler_gets_every_event_once_in_pages,
            projection::a_frozen_worker_loses_its_partition_when_its_lease_runs_out,
            rebuild::a_rebuild_beside_partitioned_workers_handles_each_event_once,
            rebuild::a_rebuild_beside_partitioned_workers_counts_each_event_once,
            rebuild::a_rebuild_and_a_switch_to_a_new_version_leave_one_active_version,
            rebuild::a_frozen_rebuild_loses_the_partitions_when_its_lease_runs_out,
            typed::a_typed_projection_gets_its_types_decoded_and_upcast,
            typed::a_rebuild_without_reset_refuses_and_changes_nothing,
            typed::run_follows_appends_of_this_process_live,
            typed::status_gives_the_lag_in_events_and_time_and_says_when_stalled,
            versions::a_new_version_takes_over_while_writers_append,
            versions::a_promoted_view_switches_readers_with_the_version,
            versions::a_rebuild_replays_history_and_then_runs_live,
            versions::a_version_1_from_before_versions_keeps_serving,
            versions::run_switches_to_a_new_version_when_it_has_caught_up,
            versions::a_partitioned_version_takes_over_from_an_unpartitioned_one,
            versions::retiring_needs_the_projection_to_say_how,
            versions::an_untyped_projection_is_told_what_it_replays,
            versions::processors_record_side_effects_and_running_workers,
            documents::one_projection_without_sql_runs_on_every_backend,
        );
    };
}

/// Every repository test body, for a fixture.
#[macro_export]
macro_rules! repository_conformance_tests {
    ($fixture:ty) => {
        $crate::conformance_tests!($fixture;
            repository::an_absent_aggregate_is_default_at_version_zero,
            repository::execute_appends_and_load_folds,
            repository::load_at_travels_back_in_time,
            repository::a_refused_command_writes_nothing_and_is_not_retried,
            repository::a_command_without_events_appends_nothing_and_succeeds,
            repository::metadata_lands_on_every_event,
            repository::eight_concurrent_depositors_end_with_the_exact_balance,
            repository::conflicts_are_retried_up_to_the_policy_with_backoff,
            repository::a_recently_contended_aggregate_starts_under_the_lock,
            repository::jitter_policies_are_honoured,
            repository::execute_in_commits_and_rolls_back_with_the_caller,
            repository::snapshots_give_the_same_state_as_full_folds,
            repository::loading_starts_from_the_snapshot_and_ignores_unusable_ones,
            repository::snapshot_is_the_state_loading_starts_from,
            repository::lock_in_holds_other_writers_off_until_the_transaction_ends,
            repository::an_undecodable_stored_event_is_a_typed_error,
            repository::a_state_cache_never_decides_on_stale_state,
            repository::a_command_id_applied_before_returns_its_original_outcome,
            repository::a_reused_command_id_is_a_typed_error_and_writes_nothing,
            repository::a_long_batch_of_one_command_is_replayed_whole,
            unit::twenty_orders_race_for_ten_units_through_the_unit_of_work,
            unit::a_unit_commits_all_or_nothing_and_types_every_refusal,
            unit::a_conflicting_unit_runs_again_whole_on_fresh_state,
            unit::an_idempotent_unit_returns_its_original_outcome,
            idempotency::idempotency_key_raced_by_concurrent_copies_through_the_repository,
            idempotency::idempotency_key_raced_by_concurrent_copies_through_a_unit_of_work,
        );
    };
}
