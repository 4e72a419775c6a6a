//! Streams and events with a lag: work enqueued on a stream completes `lag` after it was
//! enqueued, and never before the stream's earlier work (or an event it was told to wait for).
//!
//! With a lag in queries as well, each record of an event makes its next `n` queries answer
//! `CUDA_ERROR_NOT_READY` whatever the time, until a synchronize on the event, its stream or
//! the context.
//!
//! Work is a fill (`cuMemsetD8Async`) or an event record. A fill runs when it completes: the
//! first driver call after its completion time writes the bytes (every call first runs
//! [`State::progress`]), so memory freed or unmapped before the stream got there is caught:
//! the fill is skipped and recorded as an asynchronous fault, which is reported at once on
//! stderr, listed in the leak report, and makes every later synchronize return
//! `CUDA_ERROR_ILLEGAL_ADDRESS` (sticky, as on a GPU) until `coalesce_standin_reset`.
//!
//! The null stream (0), `CU_STREAM_LEGACY` (1) and `CU_STREAM_PER_THREAD` (2) all name the
//! current context's default stream, with the legacy semantics: its work waits for all
//! blocking streams of the device, and theirs for it. Non-blocking streams are independent.

use crate::state::State;
use cudarc::driver::sys::{CUevent, CUresult, CUstream};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const STREAM_BASE: usize = 0x57E0_0000_0000;
const EVENT_BASE: usize = 0xE7E0_0000_0000;
const HANDLE: CUresult = CUresult::CUDA_ERROR_INVALID_HANDLE;

#[derive(Debug)]
struct Stream {
    device: i32,
    blocking: bool,
    /// When its last enqueued work completes.
    tail: Option<Instant>,
}

#[derive(Debug)]
struct Event {
    /// When the work it captured completes (`None`: never recorded, hence complete).
    done_at: Option<Instant>,
    /// `cuEventQuery` calls still to answer `NOT_READY` (see `Streams::lag_queries`).
    queries_left: u64,
    /// Where it was last recorded: a created stream, or `None` (the default stream).
    stream: Option<usize>,
    device: i32,
}

/// A fill to run at `at`.
#[derive(Debug)]
struct Fill {
    at: Instant,
    seq: u64,
    addr: usize,
    len: usize,
    byte: u8,
}

/// Created streams and events, default-stream tails per device, and pending fills.
#[derive(Debug)]
pub(crate) struct Streams {
    pub lag: Duration,
    /// Each record makes this many queries of the event answer `NOT_READY` as well.
    pub lag_queries: u64,
    streams: HashMap<usize, Stream>,
    defaults: HashMap<i32, Instant>,
    events: HashMap<usize, Event>,
    pending: Vec<Fill>,
    next: usize,
    seq: u64,
    /// Stream work that found its memory gone; sticky.
    pub async_faults: Vec<String>,
}

impl Streams {
    pub fn new(lag: Duration, lag_queries: u64) -> Streams {
        Streams {
            lag,
            lag_queries,
            streams: HashMap::new(),
            defaults: HashMap::new(),
            events: HashMap::new(),
            pending: Vec::new(),
            next: 0,
            seq: 0,
            async_faults: Vec::new(),
        }
    }

    pub fn live_streams(&self) -> usize {
        self.streams.len()
    }

    pub fn live_events(&self) -> usize {
        self.events.len()
    }

    fn token(&mut self, base: usize) -> usize {
        self.next += 1;
        base + 16 * self.next
    }
}

fn later(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    a.max(b)
}

impl State {
    /// The stream a handle names on behalf of the calling thread: `None` for the default
    /// stream (which needs a current context), else a created one.
    fn resolve(&self, stream: CUstream) -> Result<(Option<usize>, i32), CUresult> {
        let s = stream as usize;
        if s <= 2 {
            return Ok((None, self.current_device()?));
        }
        let st = self.streams.streams.get(&s).ok_or(HANDLE)?;
        Ok((Some(s), st.device))
    }

    /// When work enqueued now on `stream` completes, given everything it must follow.
    fn completion(&self, stream: Option<usize>, device: i32) -> Instant {
        let st = &self.streams;
        let mut at = Some(Instant::now() + st.lag);
        let default_tail = st.defaults.get(&device).copied();
        match stream {
            None => {
                at = later(at, default_tail);
                for s in st
                    .streams
                    .values()
                    .filter(|s| s.device == device && s.blocking)
                {
                    at = later(at, s.tail);
                }
            }
            Some(s) => {
                let s = &st.streams[&s];
                at = later(at, s.tail);
                if s.blocking {
                    at = later(at, default_tail);
                }
            }
        }
        at.expect("started from Some")
    }

    fn set_tail(&mut self, stream: Option<usize>, device: i32, at: Instant) {
        match stream {
            None => {
                self.streams.defaults.insert(device, at);
            }
            Some(s) => self.streams.streams.get_mut(&s).expect("resolved").tail = Some(at),
        }
    }

    pub fn stream_create(&mut self, flags: u32) -> Result<CUstream, CUresult> {
        self.ready()?;
        let device = self.current_device()?;
        if flags > 1 {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        let t = self.streams.token(STREAM_BASE);
        self.streams.streams.insert(
            t,
            Stream {
                device,
                blocking: flags == 0,
                tail: None,
            },
        );
        Ok(std::ptr::without_provenance_mut(t))
    }

    /// Destroys a created stream; work already enqueued still completes.
    pub fn stream_destroy(&mut self, stream: CUstream) -> Result<(), CUresult> {
        self.ready()?;
        self.streams
            .streams
            .remove(&(stream as usize))
            .map(|_| ())
            .ok_or(HANDLE)
    }

    pub fn event_create(&mut self, flags: u32) -> Result<CUevent, CUresult> {
        self.ready()?;
        let device = self.current_device()?;
        if flags & !7 != 0 {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        let t = self.streams.token(EVENT_BASE);
        self.streams.events.insert(
            t,
            Event {
                done_at: None,
                queries_left: 0,
                stream: None,
                device,
            },
        );
        Ok(std::ptr::without_provenance_mut(t))
    }

    pub fn event_destroy(&mut self, event: CUevent) -> Result<(), CUresult> {
        self.ready()?;
        self.streams
            .events
            .remove(&(event as usize))
            .map(|_| ())
            .ok_or(HANDLE)
    }

    pub fn event_record(&mut self, event: CUevent, stream: CUstream) -> Result<(), CUresult> {
        self.ready()?;
        if !self.streams.events.contains_key(&(event as usize)) {
            return Err(HANDLE);
        }
        let (s, device) = self.resolve(stream)?;
        let at = self.completion(s, device);
        self.set_tail(s, device, at);
        let queries_left = self.streams.lag_queries;
        let e = self
            .streams
            .events
            .get_mut(&(event as usize))
            .expect("checked");
        *e = Event {
            done_at: Some(at),
            queries_left,
            stream: s,
            device,
        };
        Ok(())
    }

    /// `Ok(())` once the event's work completed and its lag in queries is used up, else
    /// `CUDA_ERROR_NOT_READY`.
    pub fn event_query(&mut self, event: CUevent) -> Result<(), CUresult> {
        self.ready()?;
        let e = self
            .streams
            .events
            .get_mut(&(event as usize))
            .ok_or(HANDLE)?;
        let counted = e.queries_left > 0;
        e.queries_left = e.queries_left.saturating_sub(1);
        match e.done_at {
            Some(t) if t > Instant::now() => Err(CUresult::CUDA_ERROR_NOT_READY),
            _ if counted => Err(CUresult::CUDA_ERROR_NOT_READY),
            _ => Ok(()),
        }
    }

    /// When the event's work completes; ends its lag in queries (a synchronize waits).
    pub fn event_deadline(&mut self, event: CUevent) -> Result<Option<Instant>, CUresult> {
        self.ready()?;
        let e = self
            .streams
            .events
            .get_mut(&(event as usize))
            .ok_or(HANDLE)?;
        e.queries_left = 0;
        Ok(e.done_at)
    }

    /// Ends the lag in queries of the events last recorded on `stream` (`None`: on any
    /// stream) of `device`, whose work a synchronize has waited for.
    fn settle_events(&mut self, stream: Option<Option<usize>>, device: i32) {
        for e in self.streams.events.values_mut() {
            if e.device == device && stream.is_none_or(|s| s == e.stream) {
                e.queries_left = 0;
            }
        }
    }

    /// Later work on `stream` completes no earlier than the event's.
    pub fn stream_wait_event(
        &mut self,
        stream: CUstream,
        event: CUevent,
        flags: u32,
    ) -> Result<(), CUresult> {
        self.ready()?;
        let done = self
            .streams
            .events
            .get(&(event as usize))
            .ok_or(HANDLE)?
            .done_at;
        let (s, device) = self.resolve(stream)?;
        if flags > 1 {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        if let Some(done) = done {
            let tail = match s {
                None => self.streams.defaults.get(&device).copied(),
                Some(s) => self.streams.streams[&s].tail,
            };
            self.set_tail(s, device, later(tail, Some(done)).expect("Some"));
        }
        Ok(())
    }

    /// When `stream`'s enqueued work completes.
    pub fn stream_deadline(&mut self, stream: CUstream) -> Result<Option<Instant>, CUresult> {
        self.ready()?;
        let (s, device) = self.resolve(stream)?;
        self.settle_events(Some(s), device);
        Ok(match s {
            None => self.streams.defaults.get(&device).copied(),
            Some(s) => self.streams.streams[&s].tail,
        })
    }

    /// When all work on the current context's device completes.
    pub fn device_deadline(&mut self) -> Result<Option<Instant>, CUresult> {
        self.ready()?;
        let device = self.current_device()?;
        self.settle_events(None, device);
        let st = &self.streams;
        let streams = st
            .streams
            .values()
            .filter(|s| s.device == device)
            .map(|s| s.tail);
        Ok(streams.fold(st.defaults.get(&device).copied(), later))
    }

    /// When the work a synchronous call on the legacy default stream must wait for completes.
    pub fn legacy_deadline(&self) -> Result<Option<Instant>, CUresult> {
        self.ready()?;
        let device = self.current_device()?;
        let st = &self.streams;
        let blocking = st
            .streams
            .values()
            .filter(|s| s.device == device && s.blocking)
            .map(|s| s.tail);
        Ok(blocking.fold(st.defaults.get(&device).copied(), later))
    }

    /// Enqueues a fill of device memory on `stream`.
    pub fn memset_async(
        &mut self,
        addr: usize,
        byte: u8,
        len: usize,
        stream: CUstream,
    ) -> Result<(), CUresult> {
        self.ready()?;
        let (s, device) = self.resolve(stream)?;
        self.check_device_range(addr, len, true)?;
        let at = self.completion(s, device);
        self.set_tail(s, device, at);
        self.streams.seq += 1;
        let seq = self.streams.seq;
        self.streams.pending.push(Fill {
            at,
            seq,
            addr,
            len,
            byte,
        });
        self.progress();
        Ok(())
    }

    /// `CUDA_ERROR_ILLEGAL_ADDRESS` once stream work has faulted.
    pub fn sticky(&self) -> Result<(), CUresult> {
        if self.streams.async_faults.is_empty() {
            Ok(())
        } else {
            Err(CUresult::CUDA_ERROR_ILLEGAL_ADDRESS)
        }
    }

    /// Runs the fills whose time has come, in completion order.
    pub fn progress(&mut self) {
        if self.streams.pending.is_empty() {
            return;
        }
        let now = Instant::now();
        let (mut due, rest): (Vec<Fill>, Vec<Fill>) = std::mem::take(&mut self.streams.pending)
            .into_iter()
            .partition(|f| f.at <= now);
        self.streams.pending = rest;
        due.sort_by_key(|f| (f.at, f.seq));
        for f in due {
            if self.check_device_range(f.addr, f.len, true).is_ok() {
                // SAFETY: the range is device memory mapped read/write right now (checked).
                unsafe { std::ptr::write_bytes(f.addr as *mut u8, f.byte, f.len) };
            } else {
                let msg = format!(
                    "cuMemsetD8Async of [{:#x}, +{}) ran after its memory was freed, unmapped or made inaccessible",
                    f.addr, f.len
                );
                eprintln!("coalesce-cuda-standin: {msg}");
                self.streams.async_faults.push(msg);
            }
        }
    }
}
