//! Writing traces in the CSV format `coalesce replay` reads.

use crate::event::RawEvent;
use std::io::{self, Write};

/// Writes `events` as CSV with the header `action,addr,size,stream`.
pub fn write_csv(events: &[RawEvent], mut out: impl Write) -> io::Result<()> {
    writeln!(out, "action,addr,size,stream")?;
    for e in events {
        writeln!(
            out,
            "{},{},{},{}",
            e.action.name(),
            e.addr,
            e.size,
            e.stream
        )?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Action, parse_csv};
    use std::path::Path;

    #[test]
    fn round_trips_through_the_reader() {
        let events: Vec<RawEvent> = (0..50u64)
            .map(|i| RawEvent {
                action: if i % 3 == 0 {
                    Action::FreeCompleted
                } else {
                    Action::Alloc
                },
                addr: i * 4096,
                size: i * 7 + 1,
                stream: i % 4,
                location: i + 2,
            })
            .collect();
        let mut buf = Vec::new();
        write_csv(&events, &mut buf).unwrap();
        assert_eq!(parse_csv(Path::new("x.csv"), &buf[..]).unwrap(), events);
    }
}
