//! Phase `wasm:<plugins>`: the route's proxy-wasm chain (listener plugins, then the route's, by
//! Istio's phase and priority). The request hook runs `on_request_headers` (and a buffered or
//! streamed request body) through every plugin; a plugin's local reply, or a failure under the
//! `fail_closed` policy, ends the request. The response hook runs the response phases in
//! reverse plugin order. `on_log` / `on_done` run when the request is accounted for.

pub mod exchange;

use std::sync::Arc;

use http::response;
use weft_body::ProxyBody;
use weft_extensions::PluginHandle;

pub use exchange::{Direction, Outcome, Pipeline, PipelineError, RequestProperties, WasmExchange};

use crate::ctx::RequestCtx;
use crate::phase::{Flow, Phase};
use crate::reply::LocalReply;

/// A route's plugin chain.
#[derive(Debug)]
pub struct WasmPhase {
    /// The plugins, in request order.
    pub chain: Vec<Arc<PluginHandle>>,
    /// The largest body any plugin of the chain may buffer.
    pub max_body: usize,
}

impl WasmPhase {
    /// The chain `chain` (already ordered).
    pub fn new(chain: Vec<Arc<PluginHandle>>) -> WasmPhase {
        let max_body = chain
            .iter()
            .map(|h| h.config.max_body_bytes)
            .max()
            .unwrap_or(0);
        WasmPhase { chain, max_body }
    }
}

impl Phase for WasmPhase {
    fn name(&self) -> String {
        let names: Vec<String> = self.chain.iter().map(|h| h.label()).collect();
        format!("wasm:{}", names.join(","))
    }

    async fn request<'a>(&'a self, ctx: &mut RequestCtx<'a>) -> Flow {
        // Envoy adds these before its filters: plugins see them.
        crate::forward::prepare::add_proto_and_request_id(
            &mut ctx.head.headers,
            ctx.conn,
            ctx.listener,
        );
        let route = ctx.route.map(|r| r.name.clone()).unwrap_or_default();
        let props = Arc::new(
            RequestProperties::new(
                &ctx.head,
                ctx.conn.peer,
                ctx.conn.local,
                route,
                ctx.conn.id,
                ctx.conn.h2,
            )
            .with_security(ctx.conn.security.clone()),
        );
        // The route's cluster is known before the upstream is picked (not for weighted splits).
        if let Some(weft_routing::Action::Forward(f)) = ctx.route.map(|r| &r.action)
            && let weft_routing::Target::Cluster(i) = f.target
            && let Some(cluster) = ctx.listener.clusters.get(i)
        {
            props.set_cluster(&cluster.name);
        }
        // A plugin holding a paused request is bounded by the route timeout.
        let hold_limit = match ctx.route.map(|r| &r.action) {
            Some(weft_routing::Action::Forward(f)) => f.timeout,
            _ => None,
        };
        let mut exchange = match WasmExchange::start(&self.chain, props).await {
            Ok(e) => e.with_hold_limit(hold_limit),
            Err(reply) => return Flow::Reply(reply),
        };
        let outcome = exchange
            .request_headers(&mut ctx.head, &ctx.authority, &mut ctx.body, self.max_body)
            .await;
        if let Outcome::Reply(reply) = outcome {
            let reply = exchange.reply(reply, self.max_body.max(1)).await;
            ctx.completion.wasm = Some(exchange);
            return Flow::Reply(reply);
        }
        let body = std::mem::replace(&mut ctx.body, ProxyBody::empty());
        match exchange.request_body(&mut ctx.head, body).await {
            Ok(body) => {
                ctx.body = body;
                ctx.completion.wasm = Some(exchange);
                Flow::Continue
            }
            Err(reply) => {
                let reply = exchange.reply(reply, self.max_body.max(1)).await;
                ctx.completion.wasm = Some(exchange);
                Flow::Reply(reply)
            }
        }
    }

    async fn response<'a>(
        &'a self,
        ctx: &mut RequestCtx<'a>,
        head: &mut response::Parts,
        body: ProxyBody,
    ) -> Result<ProxyBody, LocalReply> {
        if ctx.upgraded {
            // A 101 Switching Protocols: the connection is spliced, plugins see nothing more.
            return Ok(body);
        }
        let upstream = ctx.upstream.clone();
        let Some(exchange) = ctx.completion.wasm.as_mut() else {
            return Ok(body);
        };
        if let Some((cluster, addr)) = upstream {
            exchange.properties().set_upstream(&cluster, addr);
        }
        exchange.response(head, body, self.max_body.max(1)).await
    }
}
