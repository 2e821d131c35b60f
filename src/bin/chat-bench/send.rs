//! Scenario 1: unary Send at 1, 16, 64 and 256 clients, in one chat and in
//! 1,000 chats, against the empty unary call (Health/Check) at the same
//! concurrency.

use super::*;

impl Bench {
    /// 1: unary Send at 1/16/64/256 in 1 chat and in 1,000 chats, against Health/Check.
    pub(crate) async fn scenario1(&mut self) -> Result<(), BoxError> {
        let mut c = self.client(0);
        let one = new_chat(&mut c).await?;
        let mut many = Vec::new();
        for _ in 0..1000 {
            many.push(new_chat(&mut c).await?);
        }
        let many = Arc::new(many);
        let run = Arc::new(AtomicU64::new(0));
        for conc in [1usize, 16, 64, 256] {
            let ceiling = self.health_load(conc).await;
            if conc == 64 {
                self.unary64 = Some(ceiling.rate());
            }
            if conc == 1 {
                self.unary1_p50 = Some(ceiling.p50_us);
            }
            let mut r = row(
                1,
                format!("empty unary (Health/Check) c={conc}"),
                "req/s",
                ceiling.rate(),
                "req/s",
            );
            r.extra.insert("p50_us", ceiling.p50_us);
            r.extra.insert("p99_us", ceiling.p99_us);
            self.report.add(r);
            for (label, chats) in [
                ("1 chat", Arc::new(vec![one.clone()])),
                ("1000 chats", many.clone()),
            ] {
                let tag = run.fetch_add(1, Relaxed).to_string();
                let stats = self
                    .send_load(conc, chats, tag, "hello, a short chat message")
                    .await;
                let mut r = row(
                    1,
                    format!("Send c={conc}, {label}"),
                    "msgs/s",
                    stats.rate(),
                    "msgs/s",
                );
                r.ceiling = Some(ceiling.rate());
                if conc >= 64 {
                    let ratio = stats.rate() / ceiling.rate();
                    r.target = Some(("ratio >= 0.5".into(), ratio >= 0.5));
                }
                r.extra.insert("p50_us", stats.p50_us);
                r.extra.insert("p99_us", stats.p99_us);
                r.extra.insert("errors", stats.errors as f64);
                self.report.add(r);
            }
        }
        Ok(())
    }
}
