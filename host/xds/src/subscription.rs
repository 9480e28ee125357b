//! What the client keeps of a subscription across streams.

use std::collections::{BTreeMap, BTreeSet};

/// One type's incremental subscription, kept across streams.
#[derive(Debug, Default, Clone)]
pub(crate) struct DeltaSubscription {
    /// Names subscribed to (EDS, RDS); the wildcard types (CDS, LDS) hold none.
    pub(crate) names: BTreeSet<String>,
    /// The version of each resource held, by name.
    pub(crate) versions: BTreeMap<String, String>,
    /// A request was sent on this stream.
    pub(crate) sent: bool,
}
