//! Request deadlines without a timer per request.
//!
//! A tokio timer per request (`tokio::time::timeout`) registers and cancels a timer-wheel entry
//! for every message, which measured at more than half the cost of an in-process request/reply.
//! Deadlines here are coarse instead: a pending request parks its waker in a per-thread table
//! (a plain `RefCell`, since actix runs every task of a thread on that thread), and one ticker
//! task per thread wakes, every [`TICK`] while anything is pending, the requests whose deadline
//! has passed. A request that completes in time costs a table insert and remove, no timer.
//!
//! Outside an actix arbiter (no thread-local task set to run the ticker on) it falls back to a
//! tokio timer.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Deadline resolution: a request times out at most this long after its deadline.
pub const TICK: Duration = Duration::from_millis(10);

/// Runs `fut` until it completes (`Some`) or `deadline` passes (`None`).
/// Nothing is registered until the future is first polled and pending.
pub fn with_deadline<F: Future>(fut: F, deadline: Duration) -> Deadline<F> {
    Deadline {
        fut,
        at: Instant::now() + deadline,
        reg: None,
        fallback: None,
    }
}

struct Entry {
    token: u64,
    at: Instant,
    waker: Waker,
}

#[derive(Default)]
struct Table {
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
    live: usize,
    next_token: u64,
    ticker_running: bool,
}

impl Table {
    fn insert(&mut self, at: Instant, waker: Waker) -> (usize, u64) {
        self.next_token += 1;
        let token = self.next_token;
        let entry = Some(Entry { token, at, waker });
        let key = match self.free.pop() {
            Some(k) => {
                self.slots[k] = entry;
                k
            }
            None => {
                self.slots.push(entry);
                self.slots.len() - 1
            }
        };
        self.live += 1;
        (key, token)
    }

    fn remove(&mut self, key: usize, token: u64) {
        if let Some(slot) = self.slots.get_mut(key)
            && slot.as_ref().is_some_and(|e| e.token == token)
        {
            *slot = None;
            self.free.push(key);
            self.live -= 1;
        }
    }

    fn update_waker(&mut self, key: usize, token: u64, waker: &Waker) {
        if let Some(Some(e)) = self.slots.get_mut(key)
            && e.token == token
            && !e.waker.will_wake(waker)
        {
            e.waker = waker.clone();
        }
    }

    /// Wakes and drops every entry due at `now`.
    fn expire(&mut self, now: Instant) {
        for (key, slot) in self.slots.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|e| e.at <= now) {
                if let Some(e) = slot.take() {
                    e.waker.wake();
                }
                self.free.push(key);
                self.live -= 1;
            }
        }
    }
}

thread_local! {
    static TABLE: RefCell<Table> = RefCell::new(Table::default());
    /// Whether this thread is an actix arbiter, looked up once (the lookup clones a handle).
    static ON_ARBITER: Cell<Option<bool>> = const { Cell::new(None) };
}

fn on_arbiter() -> bool {
    ON_ARBITER.with(|c| match c.get() {
        Some(known) => known,
        None => {
            let on = actix::Arbiter::try_current().is_some();
            c.set(Some(on));
            on
        }
    })
}

/// Identifies the current thread's table (cheaper than `std::thread::current().id()`).
fn table_id() -> usize {
    TABLE.with(|t| t as *const RefCell<Table> as usize)
}

struct Registration {
    key: usize,
    token: u64,
    table: usize,
}

pin_project_lite::pin_project! {
    /// The future [`with_deadline`] returns.
    pub struct Deadline<F> {
        #[pin]
        fut: F,
        at: Instant,
        reg: Option<Registration>,
        // A tokio timer, off an arbiter only.
        fallback: Option<Pin<Box<tokio::time::Sleep>>>,
    }

    impl<F> PinnedDrop for Deadline<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            deregister(this.reg);
        }
    }
}

fn deregister(reg: &mut Option<Registration>) {
    // On another thread the entry is not ours to remove; it is dropped when it expires.
    if let Some(r) = reg.take()
        && r.table == table_id()
    {
        let _ = TABLE.try_with(|t| t.borrow_mut().remove(r.key, r.token));
    }
}

impl<F: Future> Future for Deadline<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            deregister(this.reg);
            return Poll::Ready(Some(v));
        }
        if this.fallback.is_none() && this.reg.is_none() && !on_arbiter() {
            *this.fallback = Some(Box::pin(tokio::time::sleep_until((*this.at).into())));
        }
        if let Some(sleep) = this.fallback {
            return match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
        match this.reg {
            None => {
                let (key, token) = TABLE.with(|t| {
                    let mut t = t.borrow_mut();
                    let reg = t.insert(*this.at, cx.waker().clone());
                    if !t.ticker_running {
                        t.ticker_running = true;
                        actix::spawn(ticker());
                    }
                    reg
                });
                *this.reg = Some(Registration {
                    key,
                    token,
                    table: table_id(),
                });
            }
            Some(r) => {
                if Instant::now() >= *this.at {
                    deregister(this.reg);
                    return Poll::Ready(None);
                }
                if r.table == table_id() {
                    TABLE.with(|t| t.borrow_mut().update_waker(r.key, r.token, cx.waker()));
                }
            }
        }
        Poll::Pending
    }
}

/// Clears the running flag when the ticker ends, including when its runtime drops it.
struct TickerGuard;

impl Drop for TickerGuard {
    fn drop(&mut self) {
        let _ = TABLE.try_with(|t| t.borrow_mut().ticker_running = false);
    }
}

async fn ticker() {
    let _guard = TickerGuard;
    loop {
        tokio::time::sleep(TICK).await;
        let idle = TABLE.with(|t| {
            let mut t = t.borrow_mut();
            t.expire(Instant::now());
            t.live == 0
        });
        if idle {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live_entries() -> usize {
        TABLE.with(|t| t.borrow().live)
    }

    #[actix::test]
    async fn on_an_arbiter_the_table_times_out_a_pending_future() {
        let start = Instant::now();
        let got = with_deadline(std::future::pending::<()>(), Duration::from_millis(30)).await;
        assert_eq!(got, None);
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert_eq!(live_entries(), 0);
    }

    #[actix::test]
    async fn completed_futures_leave_no_entries() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let waiting = actix::spawn(with_deadline(rx, Duration::from_secs(60)));
        tokio::task::yield_now().await;
        assert_eq!(live_entries(), 1, "a pending future is registered");
        tx.send(7).unwrap();
        assert_eq!(waiting.await.unwrap(), Some(Ok(7)));
        assert_eq!(live_entries(), 0);
    }

    #[test]
    fn off_an_arbiter_a_tokio_timer_is_used() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let got = rt.block_on(with_deadline(
            std::future::pending::<()>(),
            Duration::from_millis(20),
        ));
        assert_eq!(got, None);
        assert_eq!(live_entries(), 0, "the table is not used off an arbiter");
    }
}
