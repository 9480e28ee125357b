//! Resolving the plugin references of a listener and a route into the effective, ordered chain
//! of plugin handles (built once per generation).

use std::path::Path;
use std::sync::Arc;

use weft_config::Config;
use weft_config::schema;

use crate::registry::{PluginError, PluginHandle, PluginRegistry};

/// Where a generation's plugins come from and how strictly failures count.
#[derive(Debug, Clone, Copy)]
pub struct PluginContext<'a> {
    /// The plugin registry.
    pub registry: &'a PluginRegistry,
    /// Plugin files are relative to this directory.
    pub base_dir: &'a Path,
    /// A plugin that fails to load refuses the generation (reloads); without it (startup) the
    /// plugin's failure policy applies to requests.
    pub strict: bool,
}

impl PluginContext<'_> {
    /// The effective chain for `route_refs` on a listener with `listener_refs`: the listener's
    /// plugins less those the route disables, then the route's; sorted by Istio's order (phase,
    /// then priority, higher first; stable within equal keys).
    pub async fn chain(
        &self,
        config: &Config,
        listener_refs: &[schema::PluginRef],
        route_refs: &[schema::PluginRef],
    ) -> Result<Vec<Arc<PluginHandle>>, PluginError> {
        let disabled: Vec<&str> = route_refs
            .iter()
            .filter(|r| r.disabled)
            .map(|r| r.name.as_str())
            .collect();
        let mut refs: Vec<&schema::PluginRef> = listener_refs
            .iter()
            .filter(|r| !disabled.contains(&r.name.as_str()))
            .collect();
        refs.extend(route_refs.iter().filter(|r| !r.disabled));
        let mut chain = Vec::with_capacity(refs.len());
        for r in refs {
            let plugin = config
                .plugins
                .iter()
                .find(|p| p.name == r.name)
                .ok_or_else(|| PluginError::Unknown {
                    name: r.name.clone(),
                })?;
            let handle = self
                .registry
                .resolve(self.base_dir, plugin, r.configuration.as_ref(), self.strict)
                .await?;
            chain.push(handle);
        }
        chain.sort_by_key(|h| (h.config.phase, std::cmp::Reverse(h.config.priority)));
        Ok(chain)
    }
}
