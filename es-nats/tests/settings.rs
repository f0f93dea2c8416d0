//! The publisher's settings at their extremes: a typed refusal with the
//! allowed range from `build`, before anything is sent, never a panic or
//! an abort. The check runs in a child process (this test binary running
//! its ignored test `settings_child_publisher` with `ES_SETTINGS_CHILD`
//! set), so that an abort shows up as a failed exit status instead of
//! killing the test runner.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{connect, nats_url, unique};
use es::DomainEvent;
use es::nats::{
    Consumer, ConsumerError, MAX_ACK_WAIT, MAX_CONSUMER_BATCH, MAX_IN_FLIGHT, MAX_PUBLISH_WAIT,
    MIN_ACK_TIMEOUT, Publisher, PublisherBuilder, SetupError, StreamSettings, Subjects,
};

#[derive(Debug, Clone, PartialEq, DomainEvent)]
#[event(bounded_context = "Settings", aggregate_type = "Thing")]
enum ThingEvent {
    Happened,
}

#[test]
fn publisher_and_consumer_settings_out_of_range_are_refused_typed_in_a_child_process() {
    let name = "settings_child_publisher";
    let output = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ES_SETTINGS_CHILD", "1")
        .env("NATS_URL", nats_url())
        .output()
        .expect("start the child process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the child process `{name}` failed ({}: an abort shows as a signal)\n\
         --- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran `{name}`:\n{stdout}"
    );
    print!("{stdout}");
}

/// Each publisher and consumer setting out of range is refused by
/// `build` with [`SetupError::InvalidSetting`], and no stream or consumer
/// is created; the ends of each range are accepted.
#[tokio::test]
#[ignore = "run in a child process by publisher_and_consumer_settings_out_of_range_are_refused_typed_in_a_child_process"]
async fn settings_child_publisher() {
    if std::env::var_os("ES_SETTINGS_CHILD").is_none() {
        return;
    }
    let client = connect(&nats_url()).await;
    let stream = unique("ESTEST_SETTINGS_");
    let builder = || {
        Publisher::builder(client.clone())
            .stream(StreamSettings::new(&stream))
            .subjects(Subjects::prefixed(stream.to_lowercase()))
    };
    let out_of_range: Vec<(&str, PublisherBuilder)> = vec![
        ("max_in_flight", builder().max_in_flight(usize::MAX)),
        ("max_in_flight", builder().max_in_flight(MAX_IN_FLIGHT + 1)),
        ("outage_timeout", builder().outage_timeout(Duration::MAX)),
        (
            "outage_timeout",
            builder().outage_timeout(MAX_PUBLISH_WAIT + Duration::from_nanos(1)),
        ),
        ("ack_timeout", builder().ack_timeout(Duration::ZERO)),
        ("ack_timeout", builder().ack_timeout(Duration::MAX)),
    ];
    for (setting, builder) in out_of_range {
        match builder.build().await {
            Err(SetupError::InvalidSetting {
                setting: named,
                value,
                allowed,
            }) if named == setting => {
                println!("{setting}({value}) refused, allowed {allowed}");
            }
            other => panic!("{setting} out of range: {other:?}"),
        }
    }
    let jetstream = es::nats::async_nats::jetstream::new(client.clone());
    assert!(
        jetstream.get_stream(&stream).await.is_err(),
        "nothing was sent: no stream"
    );
    let widest = builder()
        .max_in_flight(MAX_IN_FLIGHT)
        .outage_timeout(MAX_PUBLISH_WAIT)
        .ack_timeout(MAX_PUBLISH_WAIT)
        .build()
        .await
        .expect("the widest settings are accepted");
    assert_eq!(widest.stats().max_in_flight, MAX_IN_FLIGHT);
    let narrowest = builder()
        .max_in_flight(0)
        .outage_timeout(Duration::ZERO)
        .ack_timeout(MIN_ACK_TIMEOUT)
        .build()
        .await
        .expect("the narrowest settings are accepted");
    assert_eq!(narrowest.stats().max_in_flight, 1, "0 is taken as 1");

    // the consumer, on the stream the publisher made
    let consumer = || {
        Consumer::<ThingEvent>::builder(client.clone(), &stream, "settings")
            .subjects(Subjects::prefixed(stream.to_lowercase()))
    };
    let out_of_range = [
        ("batch", consumer().batch(usize::MAX)),
        ("batch", consumer().batch(MAX_CONSUMER_BATCH + 1)),
        ("ack_wait", consumer().ack_wait(Duration::MAX)),
        (
            "ack_wait",
            consumer().ack_wait(MAX_ACK_WAIT + Duration::from_nanos(1)),
        ),
    ];
    for (setting, builder) in out_of_range {
        match builder.build().await {
            Err(ConsumerError::Setup(SetupError::InvalidSetting {
                setting: named,
                value,
                allowed,
            })) if named == setting => {
                println!("consumer {setting}({value}) refused, allowed {allowed}");
            }
            other => panic!("consumer {setting} out of range: {:?}", other.err()),
        }
    }
    let stream_info = jetstream.get_stream(&stream).await.unwrap();
    assert!(
        stream_info.consumer_info("settings").await.is_err(),
        "no consumer was created"
    );
    consumer()
        .batch(MAX_CONSUMER_BATCH)
        .ack_wait(MAX_ACK_WAIT)
        .build()
        .await
        .expect("the widest consumer settings are accepted");
    jetstream.delete_stream(&stream).await.unwrap();
}
