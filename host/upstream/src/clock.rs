//! The data path's monotonic clock in milliseconds, on tokio's clock so that tests can pause
//! and advance time.

use std::sync::OnceLock;

use tokio::time::Instant;

/// Milliseconds on a process-wide monotonic clock (never 0, so 0 can mean "not set").
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_tokios_paused_clock() {
        let before = now_ms();
        assert!(before >= 1, "0 means unset");
        tokio::time::advance(std::time::Duration::from_millis(1500)).await;
        assert_eq!(now_ms() - before, 1500);
    }
}
