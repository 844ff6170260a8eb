//! Models built from the ops on a [`Tape`](crate::tape::Tape).

pub mod densenet;

pub use densenet::{BlockMode, DenseNet, DenseNetConfig};
