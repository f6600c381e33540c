//! What a publisher and a subscriber ask for, checked: a publish request
//! into event drafts (`publish.rs`), a subscribe request into a selector
//! (`subscribe.rs`). The HTTP layer parses; these modules decide.

pub(crate) mod publish;
pub(crate) mod subscribe;
