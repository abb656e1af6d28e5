
pub mod cli;
pub mod project;
