//! `phantom.v1.PhantomController`.

use std::pin::Pin;
use std::sync::Arc;

use actix::Addr;
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::auth::Authenticator;
use super::connect;
use super::events::EventStream;
use super::limits::AccountLimits;
use super::{ask, observe, tell};
use crate::actors::contact_pages::ContactPages;
use crate::actors::contacts::{self, ContactsActor};
use crate::actors::messaging::{self, MessagingActor};
use crate::actors::subscriber::Subscriptions;
use crate::config::LimitsConfig;
use crate::core::validate::{
    self, MAX_CLIENT_MESSAGE_ID_CHARS, MAX_CONTENT_TYPE_CHARS, MAX_DISPLAY_NAME_CHARS,
    MAX_STATUS_TEXT_CHARS,
};
use crate::core::{Caller, CoreError, CoreResult, PresenceStatus};
use crate::pb::{self, phantom_controller_server::PhantomController};
use crate::store;

/// The account-facing service.
#[derive(Clone)]
pub struct ControllerService {
    pub(super) auth: Arc<Authenticator>,
    contacts: Addr<ContactsActor>,
    /// Pages the ContactsActor published, read without a round trip to it.
    contact_pages: Arc<ContactPages>,
    messaging: Addr<MessagingActor>,
    pub(super) subscriptions: Subscriptions,
    limits: LimitsConfig,
    /// Per-account rate and stream limits.
    account_limits: Arc<AccountLimits>,
    /// Cancelled when the server starts draining; ends Connect streams.
    pub(super) shutdown: CancellationToken,
}

impl ControllerService {
    /// A controller forwarding to these actors.
    pub fn new(
        auth: Arc<Authenticator>,
        contacts: Addr<ContactsActor>,
        contact_pages: Arc<ContactPages>,
        messaging: Addr<MessagingActor>,
        subscriptions: Subscriptions,
        limits: LimitsConfig,
        shutdown: CancellationToken,
    ) -> Self {
        ControllerService {
            auth,
            contacts,
            contact_pages,
            messaging,
            subscriptions,
            account_limits: AccountLimits::new(&limits),
            limits,
            shutdown,
        }
    }

    /// Opens an event feed for the caller, within `limits.max_event_streams_per_account`.
    pub(super) fn open_feed(
        &self,
        caller: &Caller,
        after_seq: Option<u64>,
    ) -> CoreResult<EventStream> {
        let permit = self.account_limits.open_stream(caller.account_id)?;
        let sub = self
            .subscriptions
            .open(caller.account_id, caller.token_id, after_seq);
        Ok(EventStream::new(sub, after_seq, permit))
    }

    fn caller<T>(&self, req: &Request<T>) -> CoreResult<Caller> {
        self.auth.controller(req.metadata())
    }

    /// Authenticates, then runs `work` for the caller inside `observe` (a plain function for
    /// the reason `logged` gives).
    fn call<Req, Resp, F>(
        &self,
        method: &'static str,
        req: Request<Req>,
        work: impl FnOnce(Caller, Req) -> F,
    ) -> impl Future<Output = Result<Response<Resp>, Status>>
    where
        F: Future<Output = CoreResult<Resp>>,
    {
        let caller = self.caller(&req);
        let account = caller.as_ref().ok().map(|c| c.account_id);
        observe(method, account, async move {
            let caller = caller?;
            work(caller, req.into_inner()).await
        })
    }

    /// SendMessage, shared by the unary call and Connect.
    pub(super) async fn send_op(
        &self,
        caller: Caller,
        r: pb::SendMessageRequest,
    ) -> CoreResult<pb::SendMessageResponse> {
        let recipient = validate::uuid("recipient_id", &r.recipient_id)?;
        self.validate_send(&r)?;
        self.account_limits.send(caller.account_id)?;
        let (reply, answer) = store::sent_reply();
        let send = messaging::SendMessage {
            sender: caller.account_id,
            recipient,
            text: r.text,
            payload: r.payload,
            content_type: r.content_type,
            client_message_id: r.client_message_id,
            reply,
        };
        let sent = tell(&self.messaging, send, answer).await?;
        Ok(pb::SendMessageResponse {
            // Its own unless a live stream still holds one of its events.
            message: Some(std::sync::Arc::unwrap_or_clone(sent.message)),
            duplicate: sent.duplicate,
        })
    }

    /// MarkRead, shared by the unary call and Connect.
    pub(super) async fn mark_read_op(
        &self,
        caller: Caller,
        r: pb::MarkReadRequest,
    ) -> CoreResult<pb::MarkReadResponse> {
        let sender = validate::uuid("contact_id", &r.contact_id)?;
        let up_to = validate::uuid("up_to_message_id", &r.up_to_message_id)?;
        let ids = ask(
            &self.messaging,
            messaging::MarkRead {
                reader: caller.account_id,
                sender,
                up_to,
            },
        )
        .await?;
        Ok(pb::MarkReadResponse {
            updated: ids.len() as i32,
        })
    }

    /// SetStatus, shared by the unary call and Connect.
    pub(super) async fn set_status_op(
        &self,
        caller: Caller,
        r: pb::SetStatusRequest,
    ) -> CoreResult<pb::SetStatusResponse> {
        let status = chosen_status(r.status)?;
        validate::text("status_text", &r.status_text, MAX_STATUS_TEXT_CHARS)?;
        ask(
            &self.contacts,
            contacts::SetStatus {
                account: caller.account_id,
                status,
                text: r.status_text,
            },
        )
        .await?;
        Ok(pb::SetStatusResponse {})
    }

    /// The `typing` command of Connect.
    pub(super) async fn typing_op(&self, caller: Caller, r: pb::TypingRequest) -> CoreResult<()> {
        let to = validate::uuid("contact_id", &r.contact_id)?;
        ask(
            &self.contacts,
            contacts::Typing {
                from: caller.account_id,
                to,
                typing: r.typing,
            },
        )
        .await
    }

    fn validate_send(&self, r: &pb::SendMessageRequest) -> CoreResult<()> {
        validate::max_bytes("text", r.text.len(), self.limits.max_text_bytes)?;
        validate::max_bytes("payload", r.payload.len(), self.limits.max_payload_bytes)?;
        if r.text.is_empty() && r.payload.is_empty() {
            return Err(CoreError::invalid(
                "text",
                "text or payload must be non-empty",
            ));
        }
        validate::text(
            "client_message_id",
            &r.client_message_id,
            MAX_CLIENT_MESSAGE_ID_CHARS,
        )?;
        validate::text("content_type", &r.content_type, MAX_CONTENT_TYPE_CHARS)
    }
}

/// A chosen presence from the wire; UNSPECIFIED and unknown values are refused.
fn chosen_status(v: i32) -> CoreResult<PresenceStatus> {
    match PresenceStatus::try_from(v) {
        Ok(PresenceStatus::Unspecified) | Err(_) => Err(CoreError::invalid(
            "status",
            "must be PRESENCE_STATUS_OFFLINE, _ONLINE, _AWAY or _BUSY",
        )),
        Ok(s) => Ok(s),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl PhantomController for ControllerService {
    async fn send_message(
        &self,
        req: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        self.call("SendMessage", req, |caller, r| self.send_op(caller, r))
            .await
    }

    async fn list_messages(
        &self,
        req: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        self.call("ListMessages", req, |caller, r| async move {
            let peer = validate::uuid("contact_id", &r.contact_id)?;
            let page = validate::page(r.page_size, &r.page_token)?;
            let page = ask(
                &self.messaging,
                messaging::ListMessages {
                    me: caller.account_id,
                    peer,
                    page,
                },
            )
            .await?;
            let (messages, next_page_token) = page.into_parts();
            Ok(pb::ListMessagesResponse {
                messages,
                next_page_token,
            })
        })
        .await
    }

    async fn mark_read(
        &self,
        req: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        self.call("MarkRead", req, |caller, r| self.mark_read_op(caller, r))
            .await
    }

    async fn get_contacts(
        &self,
        req: Request<pb::GetContactsRequest>,
    ) -> Result<Response<pb::GetContactsResponse>, Status> {
        self.call("GetContacts", req, |caller, r| async move {
            let page = validate::page(r.page_size, &r.page_token)?;
            let owner = caller.account_id;
            // A page the ContactsActor published and has not dropped since is current.
            let body = match self.contact_pages.get(owner, page) {
                Some(body) => body,
                None => ask(&self.contacts, contacts::GetContacts { owner, page }).await?,
            };
            Ok(pb::GetContactsResponse::preencoded(body))
        })
        .await
    }

    async fn add_contact(
        &self,
        req: Request<pb::AddContactRequest>,
    ) -> Result<Response<pb::AddContactResponse>, Status> {
        self.call("AddContact", req, |caller, r| async move {
            let handle = validate::handle("handle", &r.handle)?;
            validate::text("display_name", &r.display_name, MAX_DISPLAY_NAME_CHARS)?;
            let contact = ask(
                &self.contacts,
                contacts::AddContact {
                    owner: caller.account_id,
                    handle,
                    alias: r.display_name.trim().to_string(),
                },
            )
            .await?;
            Ok(pb::AddContactResponse {
                contact: Some(contact),
            })
        })
        .await
    }

    async fn update_contact(
        &self,
        req: Request<pb::UpdateContactRequest>,
    ) -> Result<Response<pb::UpdateContactResponse>, Status> {
        self.call("UpdateContact", req, |caller, r| async move {
            let peer = validate::uuid("contact_id", &r.contact_id)?;
            validate::text("display_name", &r.display_name, MAX_DISPLAY_NAME_CHARS)?;
            let contact = ask(
                &self.contacts,
                contacts::UpdateContact {
                    owner: caller.account_id,
                    peer,
                    alias: r.display_name.trim().to_string(),
                },
            )
            .await?;
            Ok(pb::UpdateContactResponse {
                contact: Some(contact),
            })
        })
        .await
    }

    async fn remove_contact(
        &self,
        req: Request<pb::RemoveContactRequest>,
    ) -> Result<Response<pb::RemoveContactResponse>, Status> {
        self.call("RemoveContact", req, |caller, r| async move {
            let peer = validate::uuid("contact_id", &r.contact_id)?;
            ask(
                &self.contacts,
                contacts::RemoveContact {
                    owner: caller.account_id,
                    peer,
                },
            )
            .await?;
            Ok(pb::RemoveContactResponse {})
        })
        .await
    }

    async fn get_profile(
        &self,
        req: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::GetProfileResponse>, Status> {
        self.call("GetProfile", req, |caller, _| async move {
            ask(&self.contacts, contacts::GetProfile(caller.account_id)).await
        })
        .await
    }

    async fn set_status(
        &self,
        req: Request<pb::SetStatusRequest>,
    ) -> Result<Response<pb::SetStatusResponse>, Status> {
        self.call("SetStatus", req, |caller, r| self.set_status_op(caller, r))
            .await
    }

    type SubscribeToEventsStream = BoxStream<pb::Event>;

    async fn subscribe_to_events(
        &self,
        req: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::SubscribeToEventsStream>, Status> {
        self.call("SubscribeToEvents", req, |caller, r| async move {
            let feed = self.open_feed(&caller, r.after_seq)?;
            Ok(Box::pin(feed) as Self::SubscribeToEventsStream)
        })
        .await
    }

    type ConnectStream = BoxStream<pb::ServerFrame>;

    async fn connect(
        &self,
        req: Request<Streaming<pb::ClientFrame>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let metadata = req.metadata().clone();
        let buffer = self.subscriptions.buffer;
        self.call("Connect", req, |caller, inbound| async move {
            let (frames, out) = mpsc::channel(buffer);
            tokio::spawn(connect::run(
                self.clone(),
                caller,
                metadata,
                inbound,
                frames,
            ));
            Ok(Box::pin(ReceiverStream::new(out)) as Self::ConnectStream)
        })
        .await
    }
}
