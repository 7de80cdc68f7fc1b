//! Obtaining and restoring OAuth grants in the browser: the authorisation-code flow with PKCE
//! (`S256`, always). A consent link ([`link`]) is recorded before the user sees it; the
//! provider sends the browser back to `/oauth/callback` ([`callback`]), which exchanges the code
//! under the token's lease and commits the grant through the same answer path as a refresh.

pub mod callback;
pub mod link;
pub mod pkce;

pub use callback::{CallbackOutcome, CallbackQuery, complete};
pub use link::{ConsentLink, LinkRequest, create_link};
