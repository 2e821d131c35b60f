//! History: one page of a chat, cut by count and by bytes, and leased from
//! the memory budget until it has been sent.

use super::{acting_for, invalid, Caller, Chats};
use crate::store::Backend as _;
use crate::{
    chat::budget::Lease,
    error::Result,
    model::{Message, View},
};

/// One History page, oldest first, with its lease on the memory budget:
/// keep the page (or the lease) until the response has been sent.
pub struct HistoryPage {
    pub messages: Vec<Message>,
    /// More messages exist in the paging direction.
    pub has_more: bool,
    lease: Lease,
    /// The most bytes the page may have on the wire (what was leased).
    max: usize,
    /// Paging forward (`after_seq`): the oldest messages are the ones to keep.
    forward: bool,
}

impl Chats {
    /// One page of a chat's history (see `History` in the proto): at most
    /// `limit` (or `--history-page`) entries that `view` shows and
    /// `--history-page-bytes`.
    /// With a verified `caller`, a members-only chat is readable by its
    /// members (and services) only.
    ///
    /// # Errors
    /// `Invalid` for a missing chat id or both cursors, `NotFound`,
    /// `PermissionDenied`, `Busy` (no room in the memory budget), `Store`.
    pub async fn history(
        &self,
        chat_id: &str,
        limit: u32,
        before_seq: Option<u64>,
        after_seq: Option<u64>,
        view: View,
        caller: Caller<'_>,
    ) -> Result<HistoryPage> {
        if chat_id.is_empty() {
            return Err(invalid("chat.History.MissingChatID", "chat_id is required"));
        }
        let chat = self.chat(super::HISTORY_IDS, chat_id).await?;
        match caller {
            Some(who) if who.service => acting_for(who, "History", chat_id),
            Some(who) => chat.check_member("chat.History.NotAMember", &who.user)?,
            None => {}
        }
        if before_seq.is_some() && after_seq.is_some() {
            return Err(invalid(
                "chat.History.InvalidCursor",
                "set before_seq or after_seq, not both",
            ));
        }
        let limits = &self.shared.limits;
        let limit = match limit {
            0 => limits.history_page,
            n => n.min(limits.history_page),
        } as usize;
        // Room for a whole page first (as many of the largest messages as
        // asked for, up to --history-page-bytes), so that stalled readers
        // cannot make pages pile up past the budget; given back as the page
        // is cut.
        let largest = limits.max_message_bytes + 2 * limits.max_id_bytes + 64;
        let wanted = limits.history_page_bytes.min(limit.saturating_mul(largest));
        let lease = self.shared.budget.lease(wanted).await?;
        let page = Box::pin(self.shared.store.page(
            &chat.id,
            before_seq,
            after_seq,
            limit,
            lease.bytes(),
            view,
        ))
        .await?;
        let mut page = HistoryPage {
            messages: page.messages,
            has_more: page.has_more,
            max: lease.bytes(),
            lease,
            forward: after_seq.is_some(),
        };
        page.fit(Message::weight);
        Ok(page)
    }
}

impl HistoryPage {
    /// Cuts the page to the bytes it may have as `size` measures a message
    /// on the wire (JSON escapes can make a message six times its text),
    /// keeping the end next to the cursor: the oldest messages when paging
    /// forward, else the newest. Always keeps one message. Gives back the
    /// lease's unused bytes.
    pub fn fit(&mut self, size: impl Fn(&Message) -> usize) {
        let max = self.max;
        let sizes: Vec<usize> = self.messages.iter().map(size).collect();
        let (mut taken, mut keep) = (0usize, 0usize);
        let mut next = |s: usize| {
            let fits = keep == 0 || taken + s <= max;
            if fits {
                taken += s;
                keep += 1;
            }
            fits
        };
        match self.forward {
            true => sizes.iter().all(|&s| next(s)),
            false => sizes.iter().rev().all(|&s| next(s)),
        };
        if keep < self.messages.len() {
            self.has_more = true;
            match self.forward {
                true => self.messages.truncate(keep),
                false => drop(self.messages.drain(..self.messages.len() - keep)),
            }
        }
        self.lease.shrink_to(taken.min(max));
    }

    /// The lease, to keep with the response until it has been sent.
    pub fn into_lease(self) -> Lease {
        self.lease
    }
}
