//! Idempotency keys raced against themselves, written once for every
//! backend: a client that sends the same request again while the first is
//! still running (an HTTP `Idempotency-Key` retried on a timeout) must get
//! the stored outcome, never a refusal decided on the first request's
//! effects, a conflict, or a second "fresh" answer.
//!
//! Each round starts N copies of one command id at once (a barrier) and
//! checks: exactly one copy reports a fresh run, every other one the
//! stored outcome (`replayed`) with the same versions, positions and
//! events, none fails, and the data holds one booking per key.

use std::sync::Arc;

use es::aggregate::{UnitOfWork, WorkError};
use es::store::{CommandId, Metadata};
use es::{Aggregate, DomainEvent, Repository, RetryPolicy};
use tokio::sync::Barrier;

use crate::support::Fixture;

/// Rounds per test: each round is a new key on new aggregates.
const ROUNDS: usize = 8;

#[derive(Debug, Clone, PartialEq, DomainEvent)]
#[event(bounded_context = "Booking", aggregate_type = "Booking")]
pub enum BookingEvent {
    Placed { seats: u32 },
}

#[derive(Debug, Default, Clone)]
pub struct Booking {
    pub seats: Option<u32>,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum BookingError {
    #[error("the booking is placed already")]
    AlreadyPlaced,
    #[error("the room is full")]
    Full,
}

pub enum BookingCommand {
    Place(u32),
}

impl Aggregate for Booking {
    type Event = BookingEvent;
    type Command = BookingCommand;
    type Error = BookingError;

    fn apply(&mut self, event: &BookingEvent) {
        let BookingEvent::Placed { seats } = event;
        self.seats = Some(*seats);
    }

    fn handle(&self, command: &BookingCommand) -> Result<Vec<BookingEvent>, BookingError> {
        let BookingCommand::Place(seats) = command;
        match self.seats {
            Some(_) => Err(BookingError::AlreadyPlaced),
            None => Ok(vec![BookingEvent::Placed { seats: *seats }]),
        }
    }
}

#[derive(Debug, Clone, PartialEq, DomainEvent)]
#[event(bounded_context = "Booking", aggregate_type = "Room")]
pub enum RoomEvent {
    Reserved { booking: String, seats: u32 },
}

#[derive(Debug, Default, Clone)]
pub struct Room {
    pub bookings: Vec<String>,
    pub taken: u32,
}

pub enum RoomCommand {
    Reserve { booking: String, seats: u32 },
}

/// A room of this many seats.
const CAPACITY: u32 = 1_000;

impl Aggregate for Room {
    type Event = RoomEvent;
    type Command = RoomCommand;
    type Error = BookingError;

    fn apply(&mut self, event: &RoomEvent) {
        let RoomEvent::Reserved { booking, seats } = event;
        self.bookings.push(booking.clone());
        self.taken += seats;
    }

    fn handle(&self, command: &RoomCommand) -> Result<Vec<RoomEvent>, BookingError> {
        let RoomCommand::Reserve { booking, seats } = command;
        if self.bookings.contains(booking) {
            return Err(BookingError::AlreadyPlaced);
        }
        if self.taken + seats > CAPACITY {
            return Err(BookingError::Full);
        }
        Ok(vec![RoomEvent::Reserved {
            booking: booking.clone(),
            seats: *seats,
        }])
    }
}

/// What a copy saw: fresh or replayed, and the positions it was told.
type Answer = (bool, Vec<i64>);

/// Checks one round's answers: one fresh, the rest replayed with the same
/// positions.
fn one_fresh_the_rest_replayed(round: usize, what: &str, answers: &[Answer]) {
    let fresh = answers.iter().filter(|(replayed, _)| !replayed).count();
    assert_eq!(
        fresh, 1,
        "round {round} ({what}): exactly one copy runs fresh, the others replay it: {answers:?}"
    );
    let positions = &answers[0].1;
    assert!(!positions.is_empty());
    for (_, other) in answers {
        assert_eq!(
            other, positions,
            "round {round} ({what}): every copy is told the stored positions"
        );
    }
}

/// A plain repository and one with a state cache, with the default retry
/// policy (conflicts retried under the aggregate's lock).
fn repositories<F: Fixture, A: Aggregate + Clone>(db: &F) -> [Repository<A, F::Store>; 2] {
    let plain = Repository::<A, F::Store>::new(db.store().clone(), db.pool().clone())
        .with_retry_policy(RetryPolicy::default());
    [plain.clone(), plain.with_state_cache(64)]
}

/// N copies of one command id through the repository, at once: on a new
/// aggregate (where the repeat is refused, `AlreadyPlaced`) and on a busy
/// one (where the repeat would be refused too, and the copies conflict on
/// the version), through the state cache and without it.
pub async fn idempotency_key_raced_by_concurrent_copies_through_the_repository<F: Fixture>() {
    const COPIES: usize = 8;
    let db = F::create().await;
    let bookings = repositories::<F, Booking>(&db);
    let rooms = repositories::<F, Room>(&db);
    for round in 0..ROUNDS {
        let booking = format!("booking-{round}");
        let key = Metadata::new().with_command_id(CommandId::from_key(&format!("place-{round}")));
        let reserve_key =
            Metadata::new().with_command_id(CommandId::from_key(&format!("reserve-{round}")));
        let barrier = Arc::new(Barrier::new(COPIES));
        let mut copies = Vec::new();
        for copy in 0..COPIES {
            let (bookings, rooms) = (bookings[copy % 2].clone(), rooms[copy % 2].clone());
            let (barrier, booking) = (barrier.clone(), booking.clone());
            let (key, reserve_key) = (key.clone(), reserve_key.clone());
            copies.push(tokio::spawn(async move {
                barrier.wait().await;
                let placed = bookings
                    .execute_with(&booking, &BookingCommand::Place(2), &key)
                    .await;
                let reserve = RoomCommand::Reserve {
                    booking: booking.clone(),
                    seats: 2,
                };
                // every round's reservations go to one room, which grows
                let reserved = rooms.execute_with("room-1", &reserve, &reserve_key).await;
                (placed, reserved)
            }));
        }
        let mut placed = Vec::new();
        let mut reserved = Vec::new();
        for copy in copies {
            let (p, r) = copy.await.unwrap();
            let p =
                p.unwrap_or_else(|e| panic!("round {round}: a copy of the booking failed: {e:?}"));
            let r = r.unwrap_or_else(|e| {
                panic!("round {round}: a copy of the reservation failed: {e:?}")
            });
            assert_eq!(p.version, 1);
            assert_eq!(p.events, vec![BookingEvent::Placed { seats: 2 }]);
            assert_eq!(p.state.seats, Some(2), "the state right after the booking");
            assert_eq!(r.events.len(), 1);
            placed.push((p.replayed, p.global_positions));
            reserved.push((r.replayed, r.global_positions));
        }
        one_fresh_the_rest_replayed(round, "booking", &placed);
        one_fresh_the_rest_replayed(round, "reservation", &reserved);
    }
    // one booking per key, one reservation per booking
    let room = bookings_in_room::<F>(&db).await;
    assert_eq!(room.bookings.len(), ROUNDS);
    assert_eq!(room.taken, 2 * ROUNDS as u32);
    for round in 0..ROUNDS {
        let loaded = bookings[0].load(&format!("booking-{round}")).await.unwrap();
        assert_eq!(loaded.version, 1);
    }
    db.finish().await;
}

async fn bookings_in_room<F: Fixture>(db: &F) -> Room {
    Repository::<Room, F::Store>::new(db.store().clone(), db.pool().clone())
        .load("room-1")
        .await
        .unwrap()
        .state
}

/// Places a booking and reserves its seats in one unit of work, with the
/// request's key; returns whether the unit was replayed, and the positions
/// of both commands' events.
async fn book<S: es::store::Store>(
    unit: &UnitOfWork<S>,
    bookings: &Repository<Booking, S>,
    rooms: &Repository<Room, S>,
    booking: &str,
    key: &Metadata,
) -> Result<Answer, WorkError> {
    unit.run_with(key, move |work| async move {
        let placed = work
            .execute(bookings, booking, &BookingCommand::Place(3))
            .await?;
        let reserve = RoomCommand::Reserve {
            booking: booking.to_owned(),
            seats: 3,
        };
        let reserved = work.execute(rooms, "room-1", &reserve).await?;
        let mut positions = placed.global_positions;
        positions.extend(reserved.global_positions);
        Ok((work.replayed(), positions))
    })
    .await
}

/// N copies of one unit of work's key, at once: a booking and a
/// reservation on a shared room.
pub async fn idempotency_key_raced_by_concurrent_copies_through_a_unit_of_work<F: Fixture>() {
    const COPIES: usize = 6;
    let db = F::create().await;
    let bookings = Repository::<Booking, F::Store>::new(db.store().clone(), db.pool().clone());
    let rooms = Repository::<Room, F::Store>::new(db.store().clone(), db.pool().clone());
    let unit = bookings.unit_of_work();
    for round in 0..ROUNDS {
        let booking = format!("booking-{round}");
        let key = Metadata::new().with_command_id(CommandId::from_key(&format!("book-{round}")));
        let barrier = Arc::new(Barrier::new(COPIES));
        let mut copies = Vec::new();
        for _ in 0..COPIES {
            let (unit, bookings, rooms) = (unit.clone(), bookings.clone(), rooms.clone());
            let (barrier, booking, key) = (barrier.clone(), booking.clone(), key.clone());
            copies.push(tokio::spawn(async move {
                barrier.wait().await;
                book(&unit, &bookings, &rooms, &booking, &key).await
            }));
        }
        let mut answers = Vec::new();
        for copy in copies {
            let answer = copy
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: a copy of the unit failed: {e:?}"));
            answers.push(answer);
        }
        one_fresh_the_rest_replayed(round, "unit", &answers);
        assert_eq!(answers[0].1.len(), 2);
    }
    let room = bookings_in_room::<F>(&db).await;
    assert_eq!(room.bookings.len(), ROUNDS, "one reservation per key");
    assert_eq!(room.taken, 3 * ROUNDS as u32);
    db.finish().await;
}
