//! Human-readable output: PNG charts ([`plot`]) that the report and the trainer draw.

pub mod plot;
