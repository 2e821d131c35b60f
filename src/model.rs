//! The domain types every layer shares: what a chat and a message are,
//! apart from how a backend stores them or a wire carries them.

use uuid::Uuid;

/// A stored message, as the stores hand it out and the chat logic publishes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Message {
    /// Server-assigned UUID, as text.
    pub id: String,
    pub client_id: String,
    pub chat: Uuid,
    pub user_id: String,
    /// Unix seconds.
    pub sent_at: i64,
    pub subject: String,
    pub text: String,
    /// 1, 2, 3, … per chat, assigned by the store.
    pub seq: u64,
}

impl Message {
    /// What holding the message costs, roughly, in bytes: its strings and a
    /// fixed overhead. Pages, stream batches and the memory budget are
    /// measured in it; `store::postgres` computes the same in SQL.
    pub fn weight(&self) -> usize {
        self.subject.len() + self.text.len() + self.client_id.len() + self.user_id.len() + 64
    }
}

/// Takes messages while the weight before each is under `max_bytes`: the
/// first always, so that a reader always progresses.
pub fn within_bytes(max_bytes: usize) -> impl FnMut(&Message) -> bool {
    let mut taken = 0usize;
    move |m| {
        let fits = taken == 0 || taken + m.weight() <= max_bytes;
        taken += m.weight();
        fits
    }
}

/// A stored chat.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatRecord {
    /// Sorted and deduplicated. Empty: an open chat anyone may post to.
    pub members: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
}

/// A message on its way into a store: everything but the seq, which the
/// store assigns when it appends.
#[derive(Clone, Debug)]
pub struct Append {
    /// `seq` is ignored (the store assigns it).
    pub message: Message,
    /// The client chose the client_id: a retry with the same
    /// (chat, user, client_id) must return the stored message.
    pub dedupe: bool,
}

/// What a store did with an [`Append`] once it is durable.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Stored now, under a new seq.
    Stored(Message),
    /// The (chat, user, client_id) was already stored: that message,
    /// untouched, and whether its subject and text are the ones asked for
    /// (a retry) or not (the client_id reused for something else).
    Existing { stored: Message, same: bool },
}

/// The canonical key of a member set: sorted, deduplicated ids, each
/// length-prefixed so that no two sets share a key (unlike joining with "-").
/// `members` must already be sorted and deduplicated, each id under 64 KiB.
pub fn member_set_key(members: &[String]) -> Vec<u8> {
    let mut key = Vec::with_capacity(members.iter().map(|m| m.len() + 2).sum());
    for m in members {
        key.extend_from_slice(&(m.len() as u16).to_be_bytes());
        key.extend_from_slice(m.as_bytes());
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_set_keys_are_unambiguous() {
        let a = member_set_key(&["a-b".into(), "c".into()]);
        let b = member_set_key(&["a".into(), "b-c".into()]);
        assert_ne!(a, b);
    }
}
