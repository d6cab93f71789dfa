//! Where samples are grouped in event time: the per-layer window, the tumbling/sliding/session
//! time windows, and the watermark that closes them. Windows hold state and batches; the
//! arithmetic they accumulate lives in `analytics`. Nothing here does I/O.

pub mod layer_window;
pub mod time_window;
pub mod watermark;
