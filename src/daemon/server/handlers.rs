//! One handler per request kind (as pueue's daemon does), dispatched from `answer`'s one match.
//! Each gets the shared state and the connection's own queue connection, and returns the reply.
//! `hello` and `subscribe` belong to the connection (`connection.rs`); the roles a request needs
//! are checked there before it gets here.

use std::sync::Arc;

use super::connection::error;
use crate::daemon::Shared;
use crate::daemon::queue::Queue;
use crate::protocol::{self, ErrorCode, EventKind, Message, Request, Results, SeriesSummary, SliceSummary};

/// The reply to one request of a greeted client with the role it needs.
pub(crate) fn answer(request: &Request, shared: &Arc<Shared>, queue: &mut Queue) -> Message {
    match request {
        Request::Status => status(shared, queue),
        Request::Pause => pause(shared),
        Request::Resume => resume(shared),
        Request::Retry { job_id } => retry(shared, queue, *job_id),
        Request::RetryAll => retry_all(shared, queue),
        Request::Recent { limit, offset } => recent(queue, *limit, *offset),
        Request::Series { key, offset, limit } => series(queue, key, *offset, *limit),
        Request::RetryForward { id } => retry_forward(shared, queue, *id),
        Request::Thumbnail { job_id, frame } => thumbnail(queue, *job_id, *frame),
        Request::Unknown => error(
            ErrorCode::UnknownRequest,
            "request type not supported by this daemon",
        ),
        Request::Hello { .. } | Request::Subscribe => error(ErrorCode::Internal, "handled elsewhere"),
    }
}

fn ack(request: &str, message: String) -> Message {
    Message::Ack {
        request: request.into(),
        message,
    }
}

fn status(shared: &Shared, queue: &Queue) -> Message {
    match shared.snapshot(queue) {
        Ok(s) => Message::Snapshot(Box::new(s)),
        Err(e) => error(ErrorCode::Internal, e.to_string()),
    }
}

fn pause(shared: &Shared) -> Message {
    shared.set_operator_pause(true);
    ack("pause", "intake paused by operator".into())
}

fn resume(shared: &Shared) -> Message {
    shared.set_operator_pause(false);
    shared.clear_device_alert();
    ack("resume", "intake resumed by operator".into())
}

fn retry(shared: &Shared, queue: &mut Queue, job_id: i64) -> Message {
    match queue.retry(job_id) {
        Ok(()) => {
            shared.publish(
                EventKind::Retried,
                format!("job {job_id} retried by operator"),
                Some(job_id),
                None,
            );
            shared.wake();
            ack("retry", format!("job {job_id} queued again"))
        }
        Err(e) => error(ErrorCode::RetryRefused, e.to_string()),
    }
}

fn retry_all(shared: &Shared, queue: &mut Queue) -> Message {
    match queue.retry_all() {
        Ok(n) => {
            shared.publish(
                EventKind::Retried,
                format!("{n} failed or quarantined jobs retried by operator"),
                None,
                None,
            );
            shared.clear_device_alert();
            shared.wake();
            ack("retry_all", format!("{n} jobs queued again"))
        }
        Err(e) => error(ErrorCode::Internal, e.to_string()),
    }
}

/// The newest slices (with thumbnails) and series, a page of at most `RECENT_MAX`.
fn recent(queue: &Queue, limit: usize, offset: usize) -> Message {
    let limit = limit.min(protocol::RECENT_MAX);
    let slices = queue.recent_slices(limit, offset, true);
    let series = queue.recent_series(limit);
    match (slices, series) {
        (Ok(slices), Ok(series)) => Message::Results(Results {
            series: series.into_iter().map(SeriesSummary::from).collect(),
            slices,
            total: None,
        }),
        (Err(e), _) | (_, Err(e)) => error(ErrorCode::Internal, e.to_string()),
    }
}

/// One reported series: its summary and a page of its slices in anatomical order.
fn series(queue: &Queue, key: &str, offset: usize, limit: Option<usize>) -> Message {
    let series = queue.series_summary(key);
    let slices = queue.series_slices(key).map(|mut s| {
        crate::daemon::series::order_slices(&mut s);
        s
    });
    match (series, slices) {
        (Ok(None), _) => error(ErrorCode::NotFound, format!("no series {key} has been reported")),
        (Ok(Some(record)), Ok(all)) => {
            let total = all.len() as u64;
            let mut page: Vec<SliceSummary> = all
                .into_iter()
                .skip(offset)
                .take(limit.unwrap_or(usize::MAX))
                .map(SliceSummary::from)
                .collect();
            // Thumbnails for the first slices of the page only: the rest on demand, so a
            // 2000-slice series is a short line.
            let with = page.len().min(protocol::SERIES_THUMBNAILS);
            match queue.attach_thumbnails(&mut page[..with]) {
                Ok(()) => Message::Results(Results {
                    series: vec![SeriesSummary::from(record)],
                    slices: page,
                    total: Some(total),
                }),
                Err(e) => error(ErrorCode::Internal, e.to_string()),
            }
        }
        (Err(e), _) | (_, Err(e)) => error(ErrorCode::Internal, e.to_string()),
    }
}

fn thumbnail(queue: &Queue, job_id: i64, frame: Option<u32>) -> Message {
    match queue.thumbnail(job_id, frame) {
        Ok(thumbnail) => Message::Thumbnail {
            job_id,
            frame,
            thumbnail,
        },
        Err(e) => error(ErrorCode::Internal, e.to_string()),
    }
}

/// Failed DICOM forwards sent again: one outbox row, or every failed one.
fn retry_forward(shared: &Shared, queue: &Queue, id: Option<i64>) -> Message {
    match crate::dicom::forward::retry(queue.connection(), id) {
        Ok(0) => error(
            ErrorCode::RetryRefused,
            match id {
                Some(id) => format!("outbox entry {id} is not failed"),
                None => "no failed outbox entry".into(),
            },
        ),
        Ok(n) => {
            shared.publish(
                EventKind::Retried,
                format!("{n} DICOM forwards retried by operator"),
                None,
                None,
            );
            ack("retry_forward", format!("{n} outbox entries pending again"))
        }
        Err(e) => error(ErrorCode::Internal, e.to_string()),
    }
}
