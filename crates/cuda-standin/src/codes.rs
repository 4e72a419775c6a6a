//! The `CUresult` codes the stand-in knows: their names and descriptions as NUL-terminated
//! statics (for `cuGetErrorName`/`cuGetErrorString`), and parsing them from fault specs.

use cudarc::driver::sys::CUresult;
use std::ffi::CStr;

/// `(code, name, description)`; the codes the stand-in returns or may be asked to inject.
const TABLE: &[(CUresult, &CStr, &CStr)] = &[
    (CUresult::CUDA_SUCCESS, c"CUDA_SUCCESS", c"no error"),
    (
        CUresult::CUDA_ERROR_INVALID_VALUE,
        c"CUDA_ERROR_INVALID_VALUE",
        c"invalid argument",
    ),
    (
        CUresult::CUDA_ERROR_OUT_OF_MEMORY,
        c"CUDA_ERROR_OUT_OF_MEMORY",
        c"out of memory",
    ),
    (
        CUresult::CUDA_ERROR_NOT_INITIALIZED,
        c"CUDA_ERROR_NOT_INITIALIZED",
        c"initialization error",
    ),
    (
        CUresult::CUDA_ERROR_DEINITIALIZED,
        c"CUDA_ERROR_DEINITIALIZED",
        c"driver shutting down",
    ),
    (
        CUresult::CUDA_ERROR_NO_DEVICE,
        c"CUDA_ERROR_NO_DEVICE",
        c"no CUDA-capable device is detected",
    ),
    (
        CUresult::CUDA_ERROR_INVALID_DEVICE,
        c"CUDA_ERROR_INVALID_DEVICE",
        c"invalid device ordinal",
    ),
    (
        CUresult::CUDA_ERROR_INVALID_CONTEXT,
        c"CUDA_ERROR_INVALID_CONTEXT",
        c"invalid device context",
    ),
    (
        CUresult::CUDA_ERROR_MAP_FAILED,
        c"CUDA_ERROR_MAP_FAILED",
        c"mapping of buffer object failed",
    ),
    (
        CUresult::CUDA_ERROR_UNMAP_FAILED,
        c"CUDA_ERROR_UNMAP_FAILED",
        c"unmapping of buffer object failed",
    ),
    (
        CUresult::CUDA_ERROR_ALREADY_MAPPED,
        c"CUDA_ERROR_ALREADY_MAPPED",
        c"resource already mapped",
    ),
    (
        CUresult::CUDA_ERROR_NOT_MAPPED,
        c"CUDA_ERROR_NOT_MAPPED",
        c"resource not mapped",
    ),
    (
        CUresult::CUDA_ERROR_ECC_UNCORRECTABLE,
        c"CUDA_ERROR_ECC_UNCORRECTABLE",
        c"uncorrectable ECC error encountered",
    ),
    (
        CUresult::CUDA_ERROR_OPERATING_SYSTEM,
        c"CUDA_ERROR_OPERATING_SYSTEM",
        c"OS call failed or operation not supported on this OS",
    ),
    (
        CUresult::CUDA_ERROR_INVALID_HANDLE,
        c"CUDA_ERROR_INVALID_HANDLE",
        c"invalid resource handle",
    ),
    (
        CUresult::CUDA_ERROR_ILLEGAL_STATE,
        c"CUDA_ERROR_ILLEGAL_STATE",
        c"the operation cannot be performed in the present state",
    ),
    (
        CUresult::CUDA_ERROR_NOT_FOUND,
        c"CUDA_ERROR_NOT_FOUND",
        c"named symbol not found",
    ),
    (
        CUresult::CUDA_ERROR_NOT_READY,
        c"CUDA_ERROR_NOT_READY",
        c"device not ready",
    ),
    (
        CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
        c"CUDA_ERROR_ILLEGAL_ADDRESS",
        c"an illegal memory access was encountered",
    ),
    (
        CUresult::CUDA_ERROR_LAUNCH_FAILED,
        c"CUDA_ERROR_LAUNCH_FAILED",
        c"unspecified launch failure",
    ),
    (
        CUresult::CUDA_ERROR_NOT_PERMITTED,
        c"CUDA_ERROR_NOT_PERMITTED",
        c"operation not permitted",
    ),
    (
        CUresult::CUDA_ERROR_NOT_SUPPORTED,
        c"CUDA_ERROR_NOT_SUPPORTED",
        c"operation not supported",
    ),
    (
        CUresult::CUDA_ERROR_TIMEOUT,
        c"CUDA_ERROR_TIMEOUT",
        c"wait operation timed out",
    ),
    (
        CUresult::CUDA_ERROR_UNKNOWN,
        c"CUDA_ERROR_UNKNOWN",
        c"unknown error",
    ),
];

fn entry(code: u32) -> Option<&'static (CUresult, &'static CStr, &'static CStr)> {
    TABLE.iter().find(|(c, _, _)| *c as u32 == code)
}

/// The code with this numeric value, if the stand-in knows it.
pub(crate) fn from_u32(code: u32) -> Option<CUresult> {
    entry(code).map(|e| e.0)
}

/// `CUDA_ERROR_X`'s name, for a known code.
pub(crate) fn name(code: u32) -> Option<&'static CStr> {
    entry(code).map(|e| e.1)
}

/// The description `cuGetErrorString` gives, for a known code.
pub(crate) fn description(code: u32) -> Option<&'static CStr> {
    entry(code).map(|e| e.2)
}

/// `OUT_OF_MEMORY`, `CUDA_ERROR_OUT_OF_MEMORY` (any case) or `2`.
pub(crate) fn parse(s: &str) -> Option<CUresult> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u32>() {
        return from_u32(n);
    }
    let upper = s.to_ascii_uppercase();
    TABLE.iter().map(|e| e.0).find(|code| {
        let full = format!("{code:?}");
        full == upper || full.strip_prefix("CUDA_ERROR_") == Some(upper.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_enum() {
        for (code, name, _) in TABLE {
            assert_eq!(format!("{code:?}"), name.to_str().unwrap());
        }
        assert_eq!(parse("not_ready"), Some(CUresult::CUDA_ERROR_NOT_READY));
        assert_eq!(parse("201"), Some(CUresult::CUDA_ERROR_INVALID_CONTEXT));
        assert_eq!(parse("12345"), None);
    }
}
