//! The durable consumer a swap finds, and the way back.
//!
//! The Go original subscribes with the legacy push API, so a durable `CONSUMER` it created is a
//! *push* consumer (deliver subject, no deliver group, explicit acks, `ACKWAIT`, filter
//! `TOPIC`), and it outlives the pod: it holds the user's position in the stream. This
//! connector pulls (what KEDA's JetStream scaler expects, and what lets replicas share one
//! durable), so on its first start it replaces that push durable by a pull durable of the same
//! name that starts right after the push durable's ack floor: nothing acknowledged before the
//! swap is delivered again, nothing unacknowledged is skipped.
//!
//! Replicas may start together (a rolling update, KEDA scaling from zero), so the position is
//! first written down in a marker consumer, `<CONSUMER>-push-position`, whose start sequence
//! *is* the position (a start sequence cannot be changed, so every replica agrees on the first
//! one written). Each replica then deletes the push durable if it is still one and creates the
//! pull durable at the marker's position; the creations are identical, so they converge. A
//! replica that finds the durable missing and the marker present (another one stopped halfway)
//! finishes the job from the marker. A replica bound to the pull durable removes the marker
//! once it is [`MARKER_GRACE`] old; a server from 2.10 on also removes it after
//! [`MARKER_INACTIVE`].
//!
//! The way back, [`restore_push`] (`nats-jetstream-http-connector --restore-push`): the pull
//! durable becomes a push durable of the same name starting after its ack floor, the shape the
//! original binds to.

use crate::config::NatsConfig;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, FromConsumer, pull, push};
use async_nats::jetstream::stream::Stream;
use connector_core::BoxError;
use std::time::Duration;

/// How long the position marker outlives its last use.
pub const MARKER_INACTIVE: Duration = Duration::from_secs(600);

/// The marker's name for `consumer`.
pub fn marker_name(consumer: &str) -> String {
    format!("{consumer}-push-position")
}

/// Binds `CONSUMER` as a pull durable: the existing pull durable, the push durable the original
/// left (replaced at its position), or a new one (deliver all).
pub async fn bind(
    stream: &Stream,
    config: &NatsConfig,
) -> Result<consumer::PullConsumer, BoxError> {
    // Each round either binds or changes the consumer's state toward a pull durable; a few
    // rounds cover replicas racing through the same steps.
    for _ in 0..5 {
        match stream.consumer_info(&config.consumer).await {
            Ok(info) if info.config.deliver_subject.is_none() => {
                check_existing(&info, config)?;
                if info.config.ack_wait != config.ack_wait {
                    // A changed ACKWAIT in the manifest takes effect without deleting anything:
                    // the ack wait is one of the settings a durable may change.
                    let updated =
                        pull::Config::try_from_consumer_config(info.config.clone()).map(|c| {
                            pull::Config {
                                ack_wait: config.ack_wait,
                                ..c
                            }
                        });
                    // Creating a durable that exists with other updatable settings updates it.
                    let result = match updated {
                        Ok(c) => stream.create_consumer(c).await.map_err(BoxError::from),
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(_) => tracing::info!(
                            consumer = %config.consumer,
                            from = ?info.config.ack_wait,
                            to = ?config.ack_wait,
                            "updated the durable consumer's ack wait to ACKWAIT"
                        ),
                        Err(e) => tracing::warn!(
                            consumer = %config.consumer,
                            error = %e,
                            "cannot update the durable consumer's ack wait; using its own"
                        ),
                    }
                }
                forget_position(stream, config).await;
                return stream.get_consumer(&config.consumer).await;
            }
            Ok(info) => {
                check_existing(&info, config)?;
                let floor = info.ack_floor.stream_sequence;
                let start = record_position(stream, config, floor + 1).await?;
                // Only a push durable is deleted; a racing replica may have replaced it already.
                let still_push = stream
                    .consumer_info(&config.consumer)
                    .await
                    .is_ok_and(|i| i.config.deliver_subject.is_some());
                if still_push {
                    let _ = stream.delete_consumer(&config.consumer).await;
                    tracing::info!(
                        consumer = %config.consumer,
                        stream_sequence = start,
                        ack_floor = floor,
                        "replaced the push durable left by the original connector with a pull durable of the same name, starting right after its last acknowledged message (to go back: --restore-push)"
                    );
                }
                if create_pull(stream, config, Some(start)).await.is_ok() {
                    forget_position(stream, config).await;
                    return stream.get_consumer(&config.consumer).await;
                }
            }
            Err(_) => {
                // Missing: finish a replacement another replica began, or start afresh.
                let start = stream
                    .consumer_info(marker_name(&config.consumer))
                    .await
                    .ok()
                    .and_then(|m| start_sequence(&m.config.deliver_policy));
                if start.is_none() {
                    tracing::info!(consumer = %config.consumer, "creating the durable consumer");
                }
                if create_pull(stream, config, start).await.is_ok() {
                    forget_position(stream, config).await;
                    return stream.get_consumer(&config.consumer).await;
                }
            }
        }
    }
    Err(format!(
        "CONSUMER: {:?} kept changing while binding it (another client creating or deleting it?)",
        config.consumer
    )
    .into())
}

/// Racing replicas finish a replacement within moments; after [`MARKER_GRACE`] the marker has
/// done its job and is removed, so that it holds no messages on a stream with interest
/// retention (servers before 2.10 do not remove inactive durables themselves).
pub const MARKER_GRACE: Duration = Duration::from_secs(60);

async fn forget_position(stream: &Stream, config: &NatsConfig) {
    let name = marker_name(&config.consumer);
    let Ok(marker) = stream.consumer_info(&name).await else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let created = u64::try_from(marker.created.unix_timestamp()).unwrap_or(now);
    let wait = MARKER_GRACE.saturating_sub(Duration::from_secs(now.saturating_sub(created)));
    let stream = stream.clone();
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        if stream.delete_consumer(&name).await.is_ok() {
            tracing::debug!(marker = %name, "removed the position marker");
        }
    });
}

/// A durable whose settings would make this connector lose messages or read another subject is
/// refused, naming the setting; one with another ack wait is used as it is (a warning says so
/// at start).
fn check_existing(info: &consumer::Info, config: &NatsConfig) -> Result<(), BoxError> {
    if info.config.ack_policy == AckPolicy::None {
        return Err(format!(
            "CONSUMER: {:?} acknowledges nothing (ack policy none), so messages would be lost on any failure; give it explicit acks, or choose another name",
            config.consumer
        )
        .into());
    }
    if info.config.filter_subject != config.subject {
        return Err(format!(
            "TOPIC: the durable consumer {:?} reads {:?}, not TOPIC {:?}; fix TOPIC, or choose another CONSUMER",
            config.consumer, info.config.filter_subject, config.subject
        )
        .into());
    }
    Ok(())
}

fn start_sequence(policy: &DeliverPolicy) -> Option<u64> {
    match policy {
        DeliverPolicy::ByStartSequence { start_sequence } => Some(*start_sequence),
        _ => None,
    }
}

/// Writes `start` down as the marker's start sequence, unless a marker exists; returns the
/// position the marker holds. Where a marker cannot be made (a work-queue stream takes one
/// consumer per subject), `start` is used as it is.
async fn record_position(
    stream: &Stream,
    config: &NatsConfig,
    start: u64,
) -> Result<u64, BoxError> {
    let name = marker_name(&config.consumer);
    if let Ok(existing) = stream.consumer_info(&name).await
        && let Some(recorded) = start_sequence(&existing.config.deliver_policy)
    {
        return Ok(recorded);
    }
    let marker = pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!(
            "keda-connectors: the position of the push durable {:?} while it becomes a pull durable",
            config.consumer
        )),
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: start,
        },
        ack_policy: AckPolicy::Explicit,
        filter_subject: config.subject.clone(),
        inactive_threshold: MARKER_INACTIVE,
        ..Default::default()
    };
    match stream.create_consumer(marker).await {
        Ok(_) => Ok(start),
        Err(e) => match stream.consumer_info(&name).await {
            // Another replica wrote its position first: that one counts.
            Ok(existing) => Ok(start_sequence(&existing.config.deliver_policy).unwrap_or(start)),
            Err(_) => {
                tracing::warn!(error = %e, consumer = %config.consumer, "cannot write the position marker; replacing the push durable without one");
                Ok(start)
            }
        },
    }
}

/// Creates the pull durable: explicit acks, `ACKWAIT`, filter `TOPIC`, from `start` or from the
/// beginning.
async fn create_pull(
    stream: &Stream,
    config: &NatsConfig,
    start: Option<u64>,
) -> Result<(), BoxError> {
    let deliver_policy = match start {
        Some(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
        None => DeliverPolicy::All,
    };
    stream
        .create_consumer(pull::Config {
            durable_name: Some(config.consumer.clone()),
            filter_subject: config.subject.clone(),
            ack_policy: AckPolicy::Explicit,
            deliver_policy,
            ack_wait: config.ack_wait,
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// What [`bind`] would do with `CONSUMER`, as a `--check` line; changes nothing.
pub async fn preview(stream: &Stream, config: &NatsConfig) -> connector_core::check::Check {
    use connector_core::check::Check;
    let name = &config.consumer;
    let var = Some("CONSUMER");
    match stream.consumer_info(name).await {
        Ok(info) => {
            if let Err(e) = check_existing(&info, config) {
                let text = e.to_string();
                let (variable, detail) = text.split_once(": ").unwrap_or(("CONSUMER", &text));
                return Check::fail("consumer", Some(variable), detail);
            }
            let floor = info.ack_floor.stream_sequence;
            if info.config.deliver_subject.is_some() {
                let bound = if info.push_bound {
                    "; a client is subscribed to it now (is the original still running?)"
                } else {
                    ""
                };
                let detail = format!(
                    "the first start replaces the push durable {name:?} (left by the original) by a pull durable of the same name from stream sequence {} (its ack floor {floor} + 1){bound}",
                    floor + 1
                );
                if info.push_bound {
                    Check::warn("consumer", var, detail)
                } else {
                    Check::ok("consumer", var, detail)
                }
            } else if info.config.ack_wait != config.ack_wait {
                Check::warn(
                    "consumer",
                    var,
                    format!(
                        "binds the pull durable {name:?} ({} pending, ack floor {floor}); its ack wait {:?} is updated to ACKWAIT {:?}",
                        info.num_pending, info.config.ack_wait, config.ack_wait
                    ),
                )
            } else {
                Check::ok(
                    "consumer",
                    var,
                    format!(
                        "binds the pull durable {name:?} ({} pending, ack floor {floor})",
                        info.num_pending
                    ),
                )
            }
        }
        Err(_) => match stream
            .consumer_info(marker_name(name))
            .await
            .ok()
            .and_then(|m| start_sequence(&m.config.deliver_policy))
        {
            Some(start) => Check::warn(
                "consumer",
                var,
                format!(
                    "{name:?} is missing while a replacement is under way: the first start creates it from stream sequence {start}"
                ),
            ),
            None => Check::ok(
                "consumer",
                var,
                format!(
                    "the first start creates the pull durable {name:?} (every message in the stream)"
                ),
            ),
        },
    }
}

/// The way back to the original: replaces the pull durable `CONSUMER` by a push durable of the
/// same name, shaped as the original's library creates it (a deliver subject, explicit acks,
/// `ACKWAIT`, filter `TOPIC`), starting right after the pull durable's ack floor. Stop this
/// connector's replicas first: a pull durable in use would be replaced under them. Returns the
/// stream sequence the push durable starts at.
pub async fn restore_push(stream: &Stream, config: &NatsConfig) -> Result<u64, BoxError> {
    let info = stream.consumer_info(&config.consumer).await.map_err(|e| {
        format!(
            "CONSUMER: cannot read the durable consumer {:?}: {e}",
            config.consumer
        )
    })?;
    if info.config.deliver_subject.is_some() {
        return Err(format!("CONSUMER: {:?} is a push durable already", config.consumer).into());
    }
    let start = info.ack_floor.stream_sequence + 1;
    stream.delete_consumer(&config.consumer).await?;
    stream
        .create_consumer(push::Config {
            durable_name: Some(config.consumer.clone()),
            deliver_subject: format!("_INBOX.{}", nuid()),
            filter_subject: config.subject.clone(),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ack_wait: info.config.ack_wait,
            ..Default::default()
        })
        .await?;
    Ok(start)
}

/// A fresh inbox token, as nats.go's `NewInbox` makes deliver subjects unique.
fn nuid() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}{:08x}", h.finish(), std::process::id())
}
