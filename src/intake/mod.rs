//! Intake: pure parsing of what arrives. Who may send (`auth`), what a
//! sender's payload means (`sources`), and the generic body (`generic`).
//! Nothing here calls out or keeps state.

pub mod auth;
pub mod generic;
pub mod sources;
