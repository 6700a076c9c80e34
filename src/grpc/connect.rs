//! `Connect`: one bidirectional stream carrying commands, their answers and the event feed.
//!
//! Commands run one at a time in arrival order; each answer carries its `request_id`, and a
//! failed command answers with an in-band `google.rpc.Status` while the stream goes on. The
//! event feed (after a `subscribe`) is interleaved with the answers. Every frame goes through one
//! bounded queue, so a client that stops reading stops being read from (HTTP/2 flow control),
//! and its feed ends with RESOURCE_EXHAUSTED like any slow stream.

use futures::StreamExt;
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;
use tonic::{Status, Streaming};

use super::controller::ControllerService;
use super::events::EventStream;
use super::logged;
use super::status::rpc_status;
use crate::core::{Caller, CoreError, CoreResult};
use crate::pb::{self, client_frame, server_frame};

type Frames = mpsc::Sender<Result<pb::ServerFrame, Status>>;

/// The event feed of a subscribed Connect stream, with the `subscribe` command's request id.
struct Feed {
    request_id: String,
    events: EventStream,
}

async fn next_event(feed: &mut Option<Feed>) -> Option<Result<pb::Event, Status>> {
    match feed {
        Some(f) => f.events.next().await,
        None => std::future::pending().await,
    }
}

/// Serves one Connect stream until the client leaves, the feed ends or the server drains.
pub async fn run(
    svc: ControllerService,
    caller: Caller,
    metadata: MetadataMap,
    mut inbound: Streaming<pb::ClientFrame>,
    frames: Frames,
) {
    let mut feed: Option<Feed> = None;
    let mut inbound_open = true;
    loop {
        tokio::select! {
            _ = frames.closed() => break,
            _ = svc.shutdown.cancelled(), if feed.is_none() => {
                let _ = frames
                    .send(Err(Status::unavailable("server is shutting down")))
                    .await;
                break;
            }
            ev = next_event(&mut feed), if feed.is_some() => match ev {
                Some(Ok(event)) => {
                    let request_id = feed.as_ref().map(|f| f.request_id.clone()).unwrap_or_default();
                    let frame = pb::ServerFrame {
                        request_id,
                        body: Some(server_frame::Body::Event(event)),
                    };
                    if frames.send(Ok(frame)).await.is_err() {
                        break;
                    }
                }
                // The feed was ended by the server (overflow, shutdown, revocation): so is the
                // stream, with the same status, naming the seq to resume from.
                Some(Err(status)) => {
                    let _ = frames.send(Err(status)).await;
                    break;
                }
                None => {
                    feed = None;
                    if !inbound_open {
                        break;
                    }
                }
            },
            frame = inbound.message(), if inbound_open => match frame {
                Ok(Some(frame)) => {
                    // A token revoked mid-stream stops working at once here too.
                    let caller = match svc.auth.controller(&metadata) {
                        Ok(c) if c.account_id == caller.account_id => c,
                        Ok(_) | Err(_) => {
                            let _ = frames
                                .send(Err(Status::unauthenticated("the stream's token was revoked")))
                                .await;
                            break;
                        }
                    };
                    if let Some(answer) = command(&svc, caller, frame, &mut feed).await
                        && frames.send(Ok(answer)).await.is_err()
                    {
                        break;
                    }
                }
                // The client will send no more commands; the feed (if any) goes on.
                Ok(None) => {
                    inbound_open = false;
                    if feed.is_none() {
                        break;
                    }
                }
                // A frame too large for limits.max_request_bytes ends the stream with
                // RESOURCE_EXHAUSTED; a broken one with what tonic reported.
                Err(status) => {
                    let status = super::status::too_large(&status).unwrap_or(status);
                    let _ = frames.send(Err(status)).await;
                    break;
                }
            },
        }
    }
}

/// Runs one command; returns the frame that answers it (none for a successful `typing` or
/// `subscribe`, whose answer is the feed's SubscriptionStarted).
async fn command(
    svc: &ControllerService,
    caller: Caller,
    frame: pb::ClientFrame,
    feed: &mut Option<Feed>,
) -> Option<pb::ServerFrame> {
    use client_frame::Body as C;
    use server_frame::Body as S;
    let request_id = frame.request_id;
    let account = Some(caller.account_id);
    let result: CoreResult<Option<S>> = match frame.body {
        None => logged("Connect.unknown", account, async {
            Err(CoreError::invalid(
                "body",
                "a ClientFrame carries one command: subscribe, send_message, mark_read, typing or set_status",
            ))
        })
        .await,
        Some(C::Subscribe(r)) => {
            logged("Connect.subscribe", account, async {
                if feed.is_some() {
                    return Err(CoreError::FailedPrecondition(
                        "subscribe: this stream is already subscribed".into(),
                    ));
                }
                *feed = Some(Feed {
                    request_id: request_id.clone(),
                    events: svc.open_feed(&caller, r.after_seq)?,
                });
                Ok(None)
            })
            .await
        }
        Some(C::SendMessage(r)) => logged("Connect.send_message", account, svc.send_op(caller, r))
            .await
            .map(|a| Some(S::SendMessage(a))),
        Some(C::MarkRead(r)) => logged("Connect.mark_read", account, svc.mark_read_op(caller, r))
            .await
            .map(|a| Some(S::MarkRead(a))),
        Some(C::SetStatus(r)) => logged("Connect.set_status", account, svc.set_status_op(caller, r))
            .await
            .map(|a| Some(S::SetStatus(a))),
        Some(C::Typing(r)) => logged("Connect.typing", account, svc.typing_op(caller, r))
            .await
            .map(|_| None),
    };
    let body = match result {
        Ok(None) => return None,
        Ok(Some(body)) => body,
        Err(e) => S::Error(rpc_status(e)),
    };
    Some(pb::ServerFrame {
        request_id,
        body: Some(body),
    })
}
