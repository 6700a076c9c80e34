//! `phantomctl`: Phantom from the command line, for people and scripts.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use phantom::client::{TlsFiles, connect_tls, with_token};
use phantom::pb::{
    self, event::Kind, phantom_admin_client::PhantomAdminClient,
    phantom_controller_client::PhantomControllerClient,
};
use tonic::transport::Channel;

/// Talk to a Phantom server.
#[derive(Parser, Debug)]
#[command(name = "phantomctl", version, about)]
struct Cli {
    /// Server address: host:port or unix:/path.
    #[arg(
        long,
        env = "PHANTOM_SERVER",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    server: String,
    /// Bearer token: an account token, or the admin token for `account` and `token`.
    #[arg(long, env = "PHANTOM_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// PEM CA of the server's certificate: speak TLS.
    #[arg(long, env = "PHANTOM_CA", global = true)]
    ca: Option<PathBuf>,
    /// PEM client certificate, for a server with mutual TLS.
    #[arg(long, env = "PHANTOM_CERT", global = true)]
    cert: Option<PathBuf>,
    /// PEM client key, with --cert.
    #[arg(long, env = "PHANTOM_KEY", global = true)]
    key: Option<PathBuf>,
    /// Name to check the server certificate against (default: the host of --server).
    #[arg(long, global = true)]
    tls_domain: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Accounts (admin token).
    #[command(subcommand)]
    Account(AccountCmd),
    /// Tokens (admin token).
    #[command(subcommand)]
    Token(TokenCmd),
    /// Your contacts.
    #[command(subcommand)]
    Contacts(ContactsCmd),
    /// Send a message to a contact (handle) or an account id.
    Send {
        /// Contact handle or account id.
        to: String,
        /// The text.
        text: String,
        /// Idempotency key: sending again with the same key sends nothing new.
        #[arg(long)]
        client_id: Option<String>,
    },
    /// The conversation with a contact (handle) or account id, newest first.
    Messages {
        /// Contact handle or account id.
        with: String,
        /// How many messages.
        #[arg(long, default_value_t = 20)]
        limit: i32,
    },
    /// Mark messages from a contact read, up to and including one message.
    Read {
        /// Contact handle or account id.
        from: String,
        /// The last message to mark read.
        message_id: String,
    },
    /// Show your profile and presence, or set your status (online, away, busy, offline).
    Status {
        /// New status; without it, the current one is shown.
        set: Option<String>,
        /// Status text to show with it.
        #[arg(long, default_value = "")]
        text: String,
    },
    /// Print your events as they come, until interrupted.
    Events {
        /// Replay every durable event after this seq first.
        #[arg(long)]
        after_seq: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum AccountCmd {
    /// Create an account; prints its id and first token.
    Create {
        /// Handle: 3 to 32 of a-z 0-9 _ . -
        handle: String,
        /// Display name (defaults to the handle).
        #[arg(long, default_value = "")]
        display_name: String,
    },
    /// List accounts.
    List,
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Issue a further token for an account.
    Issue {
        /// Account id.
        account_id: String,
    },
    /// Revoke a token.
    Revoke {
        /// Token id.
        token_id: String,
    },
}

#[derive(Subcommand, Debug)]
enum ContactsCmd {
    /// List contacts with their presence.
    List,
    /// Add an account by handle.
    Add {
        /// Its handle.
        handle: String,
        /// Your name for it.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Rename a contact (empty name resets it).
    Rename {
        /// Contact handle or account id.
        contact: String,
        /// New name.
        name: String,
    },
    /// Remove a contact.
    Remove {
        /// Contact handle or account id.
        contact: String,
    },
}

/// A failure to report: a gRPC status or a local problem.
enum Failure {
    Status(tonic::Status),
    Local(String),
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::Status(s)
    }
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure::Local(s)
    }
}

type Outcome = Result<(), Failure>;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Status(s)) => {
            // A transport failure (TLS refused, connection reset) says why in its sources.
            let mut line = format!("error: {:?}: {}", s.code(), s.message());
            let mut cause = std::error::Error::source(&s);
            while let Some(c) = cause {
                line += &format!(": {c}");
                cause = c.source();
            }
            eprintln!("{line}");
            ExitCode::from(1)
        }
        Err(Failure::Local(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
    }
}

struct Ctx {
    channel: Channel,
    token: String,
}

impl Ctx {
    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        with_token(msg, &self.token)
    }
    fn admin(&self) -> PhantomAdminClient<Channel> {
        PhantomAdminClient::new(self.channel.clone())
    }
    fn user(&self) -> PhantomControllerClient<Channel> {
        PhantomControllerClient::new(self.channel.clone())
    }

    /// Resolves a contact handle (or passes an account id through).
    async fn resolve(&self, who: &str) -> Result<String, Failure> {
        if uuid::Uuid::parse_str(who).is_ok() {
            return Ok(who.to_string());
        }
        let handle = who.trim_start_matches('@').to_ascii_lowercase();
        let mut token = String::new();
        loop {
            let page = self
                .user()
                .get_contacts(self.req(pb::GetContactsRequest {
                    page_size: 500,
                    page_token: token,
                }))
                .await?
                .into_inner();
            if let Some(c) = page.contacts.iter().find(|c| c.handle == handle) {
                return Ok(c.contact_id.clone());
            }
            if page.next_page_token.is_empty() {
                return Err(Failure::Local(format!(
                    "{who:?} is not one of your contacts; add it first or use its account id"
                )));
            }
            token = page.next_page_token;
        }
    }
}

async fn run(cli: Cli) -> Outcome {
    let token = cli.token.unwrap_or_default();
    let tls = TlsFiles {
        ca: cli.ca,
        cert: cli.cert,
        key: cli.key,
        domain: cli.tls_domain,
    };
    let channel = connect_tls(&cli.server, &tls).await?;
    let ctx = Ctx { channel, token };
    match cli.cmd {
        Cmd::Account(AccountCmd::Create {
            handle,
            display_name,
        }) => {
            let r = ctx
                .admin()
                .create_account(ctx.req(pb::CreateAccountRequest {
                    handle,
                    display_name,
                }))
                .await?
                .into_inner();
            let a = r.account.unwrap_or_default();
            println!("account_id: {}", a.account_id);
            println!("handle:     {}", a.handle);
            println!("token_id:   {}", r.token_id);
            println!("token:      {}", r.token);
        }
        Cmd::Account(AccountCmd::List) => {
            let mut page_token = String::new();
            loop {
                let r = ctx
                    .admin()
                    .list_accounts(ctx.req(pb::ListAccountsRequest {
                        page_size: 500,
                        page_token,
                    }))
                    .await?
                    .into_inner();
                for a in r.accounts {
                    println!("{}  {:<32}  {}", a.account_id, a.handle, a.display_name);
                }
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
        }
        Cmd::Token(TokenCmd::Issue { account_id }) => {
            let r = ctx
                .admin()
                .issue_token(ctx.req(pb::IssueTokenRequest { account_id }))
                .await?
                .into_inner();
            println!("token_id: {}", r.token_id);
            println!("token:    {}", r.token);
        }
        Cmd::Token(TokenCmd::Revoke { token_id }) => {
            ctx.admin()
                .revoke_token(ctx.req(pb::RevokeTokenRequest { token_id }))
                .await?;
            println!("revoked");
        }
        Cmd::Contacts(ContactsCmd::List) => {
            let mut page_token = String::new();
            loop {
                let r = ctx
                    .user()
                    .get_contacts(ctx.req(pb::GetContactsRequest {
                        page_size: 500,
                        page_token,
                    }))
                    .await?
                    .into_inner();
                for c in r.contacts {
                    println!("{}", contact_line(&c));
                }
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
        }
        Cmd::Contacts(ContactsCmd::Add { handle, name }) => {
            let r = ctx
                .user()
                .add_contact(ctx.req(pb::AddContactRequest {
                    handle,
                    display_name: name,
                }))
                .await?
                .into_inner();
            println!("{}", contact_line(&r.contact.unwrap_or_default()));
        }
        Cmd::Contacts(ContactsCmd::Rename { contact, name }) => {
            let contact_id = ctx.resolve(&contact).await?;
            let r = ctx
                .user()
                .update_contact(ctx.req(pb::UpdateContactRequest {
                    contact_id,
                    display_name: name,
                }))
                .await?
                .into_inner();
            println!("{}", contact_line(&r.contact.unwrap_or_default()));
        }
        Cmd::Contacts(ContactsCmd::Remove { contact }) => {
            let contact_id = ctx.resolve(&contact).await?;
            ctx.user()
                .remove_contact(ctx.req(pb::RemoveContactRequest { contact_id }))
                .await?;
            println!("removed");
        }
        Cmd::Send {
            to,
            text,
            client_id,
        } => {
            let recipient_id = ctx.resolve(&to).await?;
            let r = ctx
                .user()
                .send_message(ctx.req(pb::SendMessageRequest {
                    recipient_id,
                    text,
                    client_message_id: client_id.unwrap_or_default(),
                    ..Default::default()
                }))
                .await?
                .into_inner();
            let m = r.message.unwrap_or_default();
            let dup = if r.duplicate { " (duplicate)" } else { "" };
            println!("sent {}{dup}", m.message_id);
        }
        Cmd::Messages { with, limit } => {
            let contact_id = ctx.resolve(&with).await?;
            let r = ctx
                .user()
                .list_messages(ctx.req(pb::ListMessagesRequest {
                    contact_id,
                    page_size: limit,
                    page_token: String::new(),
                }))
                .await?
                .into_inner();
            for m in r.messages {
                println!("{}", message_line(&m));
            }
        }
        Cmd::Read { from, message_id } => {
            let contact_id = ctx.resolve(&from).await?;
            let r = ctx
                .user()
                .mark_read(ctx.req(pb::MarkReadRequest {
                    contact_id,
                    up_to_message_id: message_id,
                }))
                .await?
                .into_inner();
            println!("marked {} read", r.updated);
        }
        Cmd::Status { set: None, .. } => {
            let p = ctx
                .user()
                .get_profile(ctx.req(pb::GetProfileRequest {}))
                .await?
                .into_inner();
            let a = p.account.unwrap_or_default();
            println!("account_id: {}", a.account_id);
            println!("handle:     {}", a.handle);
            println!("name:       {}", a.display_name);
            println!("status:     {}", presence(p.status));
            println!("text:       {}", p.status_text);
        }
        Cmd::Status { set: Some(s), text } => {
            let status = match s.to_ascii_lowercase().as_str() {
                "online" => pb::PresenceStatus::Online,
                "away" => pb::PresenceStatus::Away,
                "busy" => pb::PresenceStatus::Busy,
                "offline" | "invisible" => pb::PresenceStatus::Offline,
                other => {
                    return Err(Failure::Local(format!(
                        "unknown status {other:?}: use online, away, busy or offline"
                    )));
                }
            };
            ctx.user()
                .set_status(ctx.req(pb::SetStatusRequest {
                    status: status as i32,
                    status_text: text,
                }))
                .await?;
            println!("status set");
        }
        Cmd::Events { after_seq } => {
            let mut stream = ctx
                .user()
                .subscribe_to_events(ctx.req(pb::EventsRequest { after_seq }))
                .await?
                .into_inner();
            loop {
                tokio::select! {
                    ev = stream.message() => match ev? {
                        Some(ev) => println!("{}", event_line(&ev)),
                        None => break,
                    },
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
        }
    }
    Ok(())
}

fn presence(v: i32) -> &'static str {
    match pb::PresenceStatus::try_from(v) {
        Ok(pb::PresenceStatus::Online) => "online",
        Ok(pb::PresenceStatus::Away) => "away",
        Ok(pb::PresenceStatus::Busy) => "busy",
        Ok(pb::PresenceStatus::Offline) => "offline",
        _ => "unknown",
    }
}

fn state(v: i32) -> &'static str {
    match pb::MessageState::try_from(v) {
        Ok(pb::MessageState::Sent) => "sent",
        Ok(pb::MessageState::Delivered) => "delivered",
        Ok(pb::MessageState::Read) => "read",
        _ => "unknown",
    }
}

fn contact_line(c: &pb::Contact) -> String {
    let text = if c.status_text.is_empty() {
        String::new()
    } else {
        format!("  \"{}\"", c.status_text)
    };
    format!(
        "{}  {:<20}  {:<20}  {}{text}",
        c.contact_id,
        c.handle,
        c.display_name,
        presence(c.status)
    )
}

fn message_line(m: &pb::Message) -> String {
    let body = if m.text.is_empty() {
        format!("<{} bytes of {}>", m.payload.len(), m.content_type)
    } else {
        m.text.clone()
    };
    let at = m.sent_at.map(|t| t.to_string()).unwrap_or_default();
    format!(
        "{}  {}  {} -> {}  [{}]  {body}",
        m.message_id,
        at,
        m.sender_id,
        m.recipient_id,
        state(m.state)
    )
}

fn event_line(ev: &pb::Event) -> String {
    let what = match &ev.kind {
        Some(Kind::SubscriptionStarted(s)) => format!(
            "subscription_started head_seq={} oldest_seq={} resumed={}",
            s.head_seq, s.oldest_seq, s.resumed
        ),
        Some(Kind::MessageReceived(m)) => {
            format!(
                "message_received {}",
                message_line(&m.message.clone().unwrap_or_default())
            )
        }
        Some(Kind::MessageSent(m)) => {
            format!(
                "message_sent {}",
                message_line(&m.message.clone().unwrap_or_default())
            )
        }
        Some(Kind::MessageStateChanged(s)) => format!(
            "message_state_changed contact={} state={} ids={}",
            s.contact_id,
            state(s.state),
            s.message_ids.join(",")
        ),
        Some(Kind::ContactAdded(c)) => {
            format!(
                "contact_added {}",
                contact_line(&c.contact.clone().unwrap_or_default())
            )
        }
        Some(Kind::ContactUpdated(c)) => {
            format!(
                "contact_updated {}",
                contact_line(&c.contact.clone().unwrap_or_default())
            )
        }
        Some(Kind::ContactRemoved(c)) => format!("contact_removed {}", c.contact_id),
        Some(Kind::ContactStatusChanged(s)) => format!(
            "contact_status_changed {} {} {}",
            s.contact_id,
            presence(s.status),
            s.status_text
        ),
        Some(Kind::TypingChanged(t)) => format!("typing_changed {} {}", t.contact_id, t.typing),
        None => "unknown event".into(),
    };
    format!("seq={} {what}", ev.seq)
}
