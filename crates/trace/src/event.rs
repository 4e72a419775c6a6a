//! Raw trace entries as PyTorch records them.

/// A PyTorch allocator trace action (`TraceEntry::Action` in `CUDACachingAllocator.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// A tensor allocation; `size` is the requested size.
    Alloc,
    /// The tensor was freed on the host; the block may still be in use by a stream.
    FreeRequested,
    /// The block is free for reuse: replays free here.
    FreeCompleted,
    /// The native allocator called cudaMalloc for a new segment.
    SegmentAlloc,
    SegmentFree,
    /// Expandable segments mapped or unmapped pages.
    SegmentMap,
    SegmentUnmap,
    /// An out-of-memory error (`addr` is absent, `size` the request).
    Oom,
    Snapshot,
    /// Any other action: counted and ignored.
    Other,
}

impl Action {
    /// Every action in declaration order (for tables).
    pub const ALL: [Action; 10] = [
        Action::Alloc,
        Action::FreeRequested,
        Action::FreeCompleted,
        Action::SegmentAlloc,
        Action::SegmentFree,
        Action::SegmentMap,
        Action::SegmentUnmap,
        Action::Oom,
        Action::Snapshot,
        Action::Other,
    ];

    /// Parses PyTorch's spelling; unknown names become [`Action::Other`] (newer PyTorch
    /// versions add actions, and a replay should not fail on them).
    pub fn parse(name: &str) -> Action {
        match name {
            "alloc" => Action::Alloc,
            "free_requested" => Action::FreeRequested,
            "free_completed" => Action::FreeCompleted,
            "segment_alloc" => Action::SegmentAlloc,
            "segment_free" => Action::SegmentFree,
            "segment_map" => Action::SegmentMap,
            "segment_unmap" => Action::SegmentUnmap,
            "oom" => Action::Oom,
            "snapshot" => Action::Snapshot,
            _ => Action::Other,
        }
    }

    /// PyTorch's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Action::Alloc => "alloc",
            Action::FreeRequested => "free_requested",
            Action::FreeCompleted => "free_completed",
            Action::SegmentAlloc => "segment_alloc",
            Action::SegmentFree => "segment_free",
            Action::SegmentMap => "segment_map",
            Action::SegmentUnmap => "segment_unmap",
            Action::Oom => "oom",
            Action::Snapshot => "snapshot",
            Action::Other => "other",
        }
    }
}

/// One trace entry. `location` says where it came from (a 1-based line for CSV, a 0-based entry
/// index for pickles), so later problems can name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent {
    pub action: Action,
    pub addr: u64,
    pub size: u64,
    /// The CUDA stream as PyTorch reports it (0 = default stream).
    pub stream: u64,
    pub location: u64,
}
