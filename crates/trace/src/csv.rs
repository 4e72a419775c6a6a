//! CSV traces: a header naming at least `action,addr,size,stream`, then one entry per line.

use crate::error::TraceError;
use crate::event::{Action, RawEvent};
use std::io::BufRead;
use std::path::Path;

const REQUIRED: [&str; 4] = ["action", "addr", "size", "stream"];

/// Reads a CSV trace. `path` is only used to name the file in errors.
///
/// Blank lines are skipped; columns beyond the four required ones are ignored; unknown actions
/// become [`Action::Other`]. A missing or malformed field, a negative size or a non-numeric
/// address is an error naming the line.
pub fn parse_csv(path: &Path, reader: impl BufRead) -> Result<Vec<RawEvent>, TraceError> {
    let mut lines = reader.lines();
    let mut line_no = 0u64;
    let io_err = |source| TraceError::Io {
        path: path.to_owned(),
        source,
    };
    let columns = loop {
        line_no += 1;
        match lines.next() {
            None => {
                return Err(TraceError::File {
                    path: path.to_owned(),
                    problem: "empty file: no CSV header".into(),
                });
            }
            Some(line) => {
                let line = line.map_err(io_err)?;
                if !line.trim().is_empty() {
                    break header_columns(path, line_no, &line)?;
                }
            }
        }
    };
    let mut events = Vec::new();
    for line in lines {
        line_no += 1;
        let line = line.map_err(io_err)?;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let event = parse_line(line, &columns, line_no).map_err(|problem| TraceError::Line {
            path: path.to_owned(),
            line: line_no,
            problem,
        })?;
        events.push(event);
    }
    Ok(events)
}

/// Indices of the required columns in the header.
fn header_columns(path: &Path, line: u64, header: &str) -> Result<[usize; 4], TraceError> {
    let names: Vec<&str> = header
        .trim_end_matches('\r')
        .split(',')
        .map(str::trim)
        .collect();
    let mut idx = [0; 4];
    for (i, want) in REQUIRED.iter().enumerate() {
        idx[i] = names
            .iter()
            .position(|n| n == want)
            .ok_or_else(|| TraceError::Line {
                path: path.to_owned(),
                line,
                problem: format!(
                    "header {header:?} lacks column {want:?} (expected {})",
                    REQUIRED.join(",")
                ),
            })?;
    }
    Ok(idx)
}

fn parse_line(line: &str, columns: &[usize; 4], line_no: u64) -> Result<RawEvent, String> {
    let mut fields = [""; 16];
    let mut n = 0;
    for f in line.split(',') {
        if n == fields.len() {
            return Err(format!("more than {} fields", fields.len()));
        }
        fields[n] = f.trim();
        n += 1;
    }
    let field = |i: usize, name: &str| -> Result<&str, String> {
        let c = columns[i];
        if c >= n {
            return Err(format!("missing field {name:?} (line has {n} fields)"));
        }
        Ok(fields[c])
    };
    let action = Action::parse(field(0, "action")?);
    let addr = parse_u64(field(1, "addr")?, "addr")?;
    let size_text = field(2, "size")?;
    if size_text.starts_with('-') {
        return Err(format!("negative size {size_text}"));
    }
    let size = parse_u64(size_text, "size")?;
    let stream = parse_u64(field(3, "stream")?, "stream")?;
    Ok(RawEvent {
        action,
        addr,
        size,
        stream,
        location: line_no,
    })
}

/// Decimal, or hexadecimal with a `0x` prefix.
fn parse_u64(text: &str, name: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse::<u64>(),
    };
    parsed.map_err(|_| {
        if text.is_empty() {
            format!("empty {name} field")
        } else {
            format!("{name} {text:?} is not a non-negative integer")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<RawEvent>, TraceError> {
        parse_csv(Path::new("t.csv"), text.as_bytes())
    }

    #[test]
    fn reads_entries_and_skips_blank_lines() {
        let ev =
            parse("action,addr,size,stream\nalloc,4096,100,0\n\nfree_completed,0x1000,100,7\r\n")
                .unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(
            ev[0],
            RawEvent {
                action: Action::Alloc,
                addr: 4096,
                size: 100,
                stream: 0,
                location: 2
            }
        );
        assert_eq!(ev[1].addr, 4096);
        assert_eq!(ev[1].stream, 7);
        assert_eq!(ev[1].location, 4);
    }

    #[test]
    fn columns_may_be_reordered_and_extra() {
        let ev = parse("time_us,stream,size,addr,action\n5,1,2,3,alloc\n").unwrap();
        assert_eq!((ev[0].addr, ev[0].size, ev[0].stream), (3, 2, 1));
    }

    #[test]
    fn unknown_actions_are_kept_as_other() {
        let ev = parse("action,addr,size,stream\nfrobnicate,1,2,3\n").unwrap();
        assert_eq!(ev[0].action, Action::Other);
    }

    fn error_text(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_file_line_and_problem() {
        assert_eq!(
            error_text("action,addr,size,stream\nalloc,1,-5,0\n"),
            "t.csv:2: negative size -5"
        );
        assert_eq!(
            error_text("action,addr,size,stream\nalloc,1,2,0\nalloc,zz,2,0\n"),
            "t.csv:3: addr \"zz\" is not a non-negative integer"
        );
        assert_eq!(
            error_text("action,addr,size,stream\nalloc,1\n"),
            "t.csv:2: missing field \"size\" (line has 2 fields)"
        );
        assert!(error_text("action,addr,size\n").starts_with("t.csv:1: header"));
        assert_eq!(error_text(""), "t.csv: empty file: no CSV header");
        assert_eq!(
            error_text("action,addr,size,stream\nalloc,1,,0\n"),
            "t.csv:2: empty size field"
        );
    }
}
