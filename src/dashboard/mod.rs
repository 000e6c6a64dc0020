//! The live dashboard: [`state`] folds engine events into a model, [`input`] turns keys into
//! intents, [`ui`] draws the model, [`client`] reaches the engine (in-process or over the
//! control socket), [`app`] runs the loop. The engine never waits for the dashboard.

pub mod app;
pub mod client;
pub mod input;
pub mod state;
pub mod ui;
