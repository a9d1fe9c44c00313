//! Framing by command_length (placeholder while the codec work is in progress).
