//! Edits and deletions: events stored in the chat's one gap-free sequence,
//! through the same stage-and-commit path as a message, so that they are
//! idempotent on client_id, durable before acknowledged, and replayed
//! exactly once, in order, to a stream that resumes with since-seq.

use crate::store::Backend as _;
use uuid::Uuid;

use super::{
    acting_as, check_id, commit::Answer, id_fault, ids, invalid, now, now_us, wait_commit, Caller,
    Chats,
};
use crate::{
    error::{Error, Result},
    model::{Append, Kind, Message, Refusal},
};

/// An edit or a delete as a client asks for it.
#[derive(Clone, Debug, Default)]
pub struct Change {
    pub client_id: String,
    pub chat_id: String,
    pub user_id: String,
    /// The message's seq.
    pub seq: u64,
    /// The new subject and text (an edit).
    pub subject: String,
    pub text: String,
}

/// What an edit or delete did: the message as it is now, and the event's seq.
#[derive(Debug)]
pub struct Changed {
    pub message: Message,
    pub event_seq: u64,
}

impl Chats {
    /// Replaces a message's subject and text (see `Edit` in the proto).
    ///
    /// # Errors
    /// `Invalid`/`TooLarge` for a bad request, `NotFound` for an unknown
    /// chat or message, `PermissionDenied` for another's message or a
    /// non-member, `FailedPrecondition` for a deleted message,
    /// `AlreadyExists` for a reused client_id, `Store`/`Unavailable`.
    pub async fn edit(&self, change: Change, caller: Caller<'_>) -> Result<Changed> {
        self.change(Kind::Edit, change, caller).await
    }

    /// Deletes a message's subject and text (see `Delete` in the proto).
    ///
    /// # Errors
    /// As [`Chats::edit`].
    pub async fn delete(&self, mut change: Change, caller: Caller<'_>) -> Result<Changed> {
        change.subject.clear();
        change.text.clear();
        self.change(Kind::Delete, change, caller).await
    }

    async fn change(&self, kind: Kind, mut change: Change, caller: Caller<'_>) -> Result<Changed> {
        let (method, errors) = match kind {
            Kind::Edit => ("Edit", ids::EDIT_IDS),
            _ => ("Delete", ids::DELETE_IDS),
        };
        let id = |what: &str| -> &'static str { error_id(kind, what) };
        change.user_id = acting_as(caller, &change.user_id, method, id("WrongUser"))?;
        let limits = &self.shared.limits;
        if change.chat_id.is_empty() {
            return Err(invalid(id("MissingChatID"), "chat_id is required"));
        }
        if change.user_id.is_empty() {
            return Err(invalid(id("MissingUserID"), "user_id is required"));
        }
        if change.seq == 0 {
            return Err(invalid(
                id("MissingSeq"),
                "seq is required: the seq of the message to change",
            ));
        }
        if kind == Kind::Edit && change.text.is_empty() {
            return Err(invalid(
                id("MissingText"),
                "text is required (to remove a message, use Delete)",
            ));
        }
        check_id(id("InvalidUserID"), "user_id", &change.user_id, limits)?;
        if change.client_id.len() > limits.max_id_bytes {
            return Err(Error::TooLarge(
                id("InvalidClientID"),
                format!(
                    "client_id is {} bytes; the limit is {}",
                    change.client_id.len(),
                    limits.max_id_bytes
                ),
            ));
        }
        if let Some(why) = id_fault(&change.client_id) {
            return Err(invalid(id("InvalidClientID"), format!("client_id: {why}")));
        }
        let size = change.subject.len() + change.text.len();
        if size > limits.max_message_bytes {
            return Err(Error::TooLarge(
                id("TooLarge"),
                format!(
                    "subject and text are {size} bytes; the limit is {}",
                    limits.max_message_bytes
                ),
            ));
        }
        if change.subject.contains('\0') || change.text.contains('\0') {
            return Err(invalid(
                id("InvalidText"),
                "subject and text must not contain NUL characters",
            ));
        }
        let chat = self.chat(errors, &change.chat_id).await?;
        chat.check_member(id("NotAMember"), &change.user_id)?;

        let dedupe = !change.client_id.is_empty();
        let at_us = now_us();
        let event = Message {
            id: Uuid::new_v4().to_string(),
            client_id: if dedupe {
                change.client_id
            } else {
                Uuid::new_v4().to_string()
            },
            chat: chat.id,
            user_id: change.user_id,
            sent_at: now(),
            subject: change.subject,
            text: change.text,
            kind,
            target: change.seq,
            at_us,
            ..Message::default()
        };
        let staged = self.shared.store.stage(Append {
            message: event,
            dedupe,
        })?;
        let chat_id = chat.id;
        match wait_commit(self.queue_commit(Some((staged, chat)))).await? {
            Answer::Event { event, target } => Ok(Changed {
                message: target,
                event_seq: event.seq,
            }),
            Answer::Refused(why) => Err(refused(kind, why, change.seq)),
            Answer::Existing { stored, same } => {
                if !same {
                    return Err(Error::AlreadyExists(
                        id("ClientIDReused"),
                        format!(
                            "client_id {:?} was already used by this user in this chat for \
                             another request; use a new client_id",
                            stored.client_id
                        ),
                    ));
                }
                // A retry: the message as it is now.
                let message = self
                    .shared
                    .store
                    .read(&chat_id, stored.target, stored.target, 1, usize::MAX)
                    .await?
                    .into_iter()
                    .next()
                    .ok_or_else(|| refused(kind, Refusal::NoSuchMessage, stored.target))?;
                Ok(Changed {
                    message,
                    event_seq: stored.seq,
                })
            }
            Answer::Stored(_) | Answer::Durable => Err(Error::Unavailable(
                "the change was not committed; retry with the same client_id".into(),
            )),
        }
    }
}

/// The error of a refused change.
fn refused(kind: Kind, why: Refusal, seq: u64) -> Error {
    match why {
        Refusal::NoSuchMessage => Error::NotFound(
            error_id(kind, "NoSuchMessage"),
            format!("the chat has no message with seq {seq}"),
        ),
        Refusal::NotTheSender(sender) => Error::PermissionDenied(
            error_id(kind, "NotTheSender"),
            format!(
                "message {seq} was sent by {}; only its sender may change it",
                super::shown(&sender)
            ),
        ),
        Refusal::Deleted => Error::FailedPrecondition(
            error_id(kind, "Deleted"),
            format!("message {seq} was deleted; a deleted message cannot be edited"),
        ),
        Refusal::TooManyEdits => Error::FailedPrecondition(
            error_id(kind, "TooManyEdits"),
            format!(
                "message {seq} has been edited {} times, the most there may be; send a new message",
                crate::model::MAX_EDITS
            ),
        ),
    }
}

/// `chat.Edit.{what}` or `chat.Delete.{what}`, as a static id.
fn error_id(kind: Kind, what: &str) -> &'static str {
    macro_rules! ids {
        ($($what:literal),*) => {
            match (kind, what) {
                $((Kind::Edit, $what) => concat!("chat.Edit.", $what),)*
                $((_, $what) => concat!("chat.Delete.", $what),)*
                _ => "chat.Invalid",
            }
        };
    }
    ids!(
        "WrongUser",
        "MissingChatID",
        "MissingUserID",
        "MissingSeq",
        "MissingText",
        "InvalidUserID",
        "InvalidClientID",
        "TooLarge",
        "InvalidText",
        "NotAMember",
        "ClientIDReused",
        "NoSuchMessage",
        "NotTheSender",
        "Deleted",
        "TooManyEdits"
    )
}
