//! placeholder
pub mod queue;
pub mod settings;
pub mod watcher;
