//! `ReplayWindow` under arbitrary check/mark sequences, window sizes and a monotonic clock
//! with arbitrary steps. Checks the rules the data channel relies on: id 0 is never accepted,
//! an id is accepted at most once, `highest` is the largest id accepted, an id above it is
//! always acceptable, and a window of 0 accepts only the successor of the last id.
#![no_main]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use vpn_daemon::proto::data::{
    ReplayConfig, ReplayWindow, MAX_REPLAY_TIME_WINDOW, MAX_REPLAY_WINDOW,
};

fn run(input: &mut Unstructured<'_>) -> Result<()> {
    let config = ReplayConfig {
        window: input.int_in_range(0..=MAX_REPLAY_WINDOW)?,
        time_window: Duration::from_millis(
            input.int_in_range(0..=MAX_REPLAY_TIME_WINDOW.as_millis() as u64)?,
        ),
        tcp: input.arbitrary()?,
    };
    let mut window = ReplayWindow::new(config).expect("config within limits");
    let start = Instant::now();
    let mut elapsed = Duration::ZERO;
    let mut accepted = HashSet::new();
    let mut highest = 0u32;
    while !input.is_empty() {
        elapsed += Duration::from_millis(u64::from(input.arbitrary::<u16>()?) * 16);
        let now = start + elapsed;
        // Mostly ids near the highest, where the window's edges are.
        let id = if input.arbitrary()? {
            input.arbitrary::<u32>()?
        } else {
            highest.wrapping_add_signed(i32::from(input.arbitrary::<i8>()?))
        };
        if highest < u32::MAX {
            assert!(
                window.check(now, highest + 1).is_ok(),
                "the id after the highest ({highest}) was refused"
            );
        }
        if input.arbitrary()? {
            // check only: must not record anything.
            let _ = window.check(now, id);
            continue;
        }
        match window.check_and_mark(now, id) {
            Ok(()) => {
                assert_ne!(id, 0, "id 0 accepted");
                assert!(accepted.insert(id), "id {id} accepted twice");
                if config.window == 0 {
                    assert!(
                        highest == 0 || id == highest + 1,
                        "strict mode accepted {id} after {highest}"
                    );
                }
                highest = highest.max(id);
            }
            Err(_) if config.window == 0 => {
                assert!(id == 0 || (highest != 0 && id != highest.wrapping_add(1)));
            }
            Err(_) => assert!(
                id == 0 || id <= highest,
                "id {id} above highest {highest} refused"
            ),
        }
        assert_eq!(window.highest(), highest);
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
