//! RDS: `envoy.config.route.v3.RouteConfiguration` → Weft virtual hosts.
//!
//! Header mutations of the virtual host and of the route configuration are folded into each
//! route, after the route's own (so with the default `most_specific_header_mutations_wins:
//! false`, the outer level's `set` wins, as in Envoy).

use envoy_types::pb::envoy::config::core::v3::HeaderValueOption as XHeader;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::route::v3 as r;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use r::header_matcher::HeaderMatchSpecifier as H;
use r::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
use r::redirect_action::{PathRewriteSpecifier, SchemeRewriteSpecifier};
use r::route::Action;
use r::route_action::{ClusterSpecifier, HostRewriteSpecifier};
use r::route_match::PathSpecifier;
use weft_config::schema::{
    DirectResponseAction, ForwardAction, HeaderMatch, HeaderMutations, HeaderValueOption,
    PathMatch, QueryMatch, RedirectAction, Route, RouteMatch, VirtualHost, WeightedCluster,
};

use super::duration;
use crate::fields::reject_rest;

/// The virtual hosts of one route configuration; `path` names it in errors.
pub(crate) fn route_configuration(
    path: &str,
    rc: r::RouteConfiguration,
) -> Result<Vec<VirtualHost>, String> {
    let mut rest = rc;
    rest.name.clear();
    let vhosts = std::mem::take(&mut rest.virtual_hosts);
    let outer = mutations(
        path,
        std::mem::take(&mut rest.request_headers_to_add),
        std::mem::take(&mut rest.request_headers_to_remove),
        std::mem::take(&mut rest.response_headers_to_add),
        std::mem::take(&mut rest.response_headers_to_remove),
    )?;
    // Ignored: cluster validation happens anyway (routes to unknown clusters answer 503).
    rest.validate_clusters = None;
    rest.metadata = None;
    reject_rest(path, &rest)?;
    let mut out = Vec::with_capacity(vhosts.len());
    for (i, vh) in vhosts.into_iter().enumerate() {
        out.push(virtual_host(
            &format!("{path}.virtual_hosts[{i}]"),
            vh,
            &outer,
        )?);
    }
    Ok(out)
}

fn virtual_host(
    path: &str,
    vh: r::VirtualHost,
    outer: &(HeaderMutations, HeaderMutations),
) -> Result<VirtualHost, String> {
    let mut rest = vh;
    let name = std::mem::take(&mut rest.name);
    let domains = std::mem::take(&mut rest.domains);
    let routes = std::mem::take(&mut rest.routes);
    let mut own = mutations(
        path,
        std::mem::take(&mut rest.request_headers_to_add),
        std::mem::take(&mut rest.request_headers_to_remove),
        std::mem::take(&mut rest.response_headers_to_add),
        std::mem::take(&mut rest.response_headers_to_remove),
    )?;
    rest.metadata = None;
    reject_rest(path, &rest)?;
    extend(&mut own.0, &outer.0);
    extend(&mut own.1, &outer.1);
    let mut out = Vec::with_capacity(routes.len());
    for (i, route) in routes.into_iter().enumerate() {
        out.push(self::route(&format!("{path}.routes[{i}]"), route, &own)?);
    }
    Ok(VirtualHost {
        name,
        domains,
        routes: out,
    })
}

fn extend(into: &mut HeaderMutations, from: &HeaderMutations) {
    into.remove.extend(from.remove.iter().cloned());
    into.set.extend(from.set.iter().cloned());
    into.add.extend(from.add.iter().cloned());
}

fn route(
    path: &str,
    route: r::Route,
    outer: &(HeaderMutations, HeaderMutations),
) -> Result<Route, String> {
    let mut rest = route;
    let name = std::mem::take(&mut rest.name);
    let (mut request_headers, mut response_headers) = mutations(
        path,
        std::mem::take(&mut rest.request_headers_to_add),
        std::mem::take(&mut rest.request_headers_to_remove),
        std::mem::take(&mut rest.response_headers_to_add),
        std::mem::take(&mut rest.response_headers_to_remove),
    )?;
    extend(&mut request_headers, &outer.0);
    extend(&mut response_headers, &outer.1);
    let matcher = route_match(
        &format!("{path}.match"),
        rest.r#match.take().unwrap_or_default(),
    )?;
    // The route's span name (tracing); an empty operation is Envoy's "no decorator".
    let decorator = rest
        .decorator
        .take()
        .filter(|d| !d.operation.is_empty())
        .map(|d| weft_config::schema::Decorator {
            operation: d.operation,
        });
    // Ignored: observability-only fields.
    rest.metadata = None;
    rest.stat_prefix.clear();
    let fault = per_filter_config(path, std::mem::take(&mut rest.typed_per_filter_config))?;
    let mut out = Route {
        name: (!name.is_empty()).then_some(name),
        matcher,
        route: None,
        redirect: None,
        direct_response: None,
        request_headers,
        response_headers,
        plugins: Vec::new(),
        fault,
        local_rate_limit: None,
        decorator,
    };
    match rest.action.take() {
        Some(Action::Route(a)) => out.route = Some(route_action(&format!("{path}.route"), a)?),
        Some(Action::Redirect(a)) => out.redirect = Some(redirect(&format!("{path}.redirect"), a)?),
        Some(Action::DirectResponse(a)) => {
            let mut a = a;
            let status = u16::try_from(a.status)
                .ok()
                .filter(|s| (200..=599).contains(s))
                .ok_or_else(|| {
                    format!("{path}.direct_response.status: {} is not 200-599", a.status)
                })?;
            let body = match a.body.take().and_then(|b| b.specifier) {
                None => None,
                Some(Specifier::InlineString(s)) => Some(s),
                Some(Specifier::InlineBytes(b)) => Some(String::from_utf8(b).map_err(|_| {
                    format!(
                        "{path}.direct_response.body.inline_bytes: only UTF-8 text is implemented"
                    )
                })?),
                Some(_) => {
                    return Err(format!(
                        "{path}.direct_response.body: only inline bodies are implemented"
                    ));
                }
            };
            a.status = 0;
            reject_rest(&format!("{path}.direct_response"), &a)?;
            out.direct_response = Some(DirectResponseAction { status, body });
        }
        Some(_) => {
            return Err(format!(
                "{path}: only route, redirect and direct_response actions are implemented"
            ));
        }
        None => {
            return Err(format!(
                "{path}: an action (route, redirect, direct_response) is required"
            ));
        }
    }
    reject_rest(path, &rest)?;
    Ok(out)
}

/// A route's `typed_per_filter_config`: the fault filter's `HTTPFault` (how istiod renders a
/// VirtualService's `fault`) becomes the route's fault; any other filter's NACKs.
fn per_filter_config(
    path: &str,
    configs: std::collections::HashMap<String, envoy_types::pb::google::protobuf::Any>,
) -> Result<Option<weft_config::resilience::Fault>, String> {
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{HttpFault, fault_abort};
    use prost::Message;
    use weft_config::resilience::{Fault, FaultAbort, FaultDelay};

    let mut fault = None;
    let mut names: Vec<_> = configs.into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, any) in names {
        let fpath = format!("{path}.typed_per_filter_config[\"{name}\"]");
        if any.type_url != super::native::FAULT {
            return Err(format!(
                "{fpath}: `{}` is unimplemented (only the fault filter's HTTPFault is)",
                any.type_url
            ));
        }
        let mut f = HttpFault::decode(any.value.as_slice()).map_err(|e| format!("{fpath}: {e}"))?;
        let mut out = Fault {
            delay: None,
            abort: None,
            headers: Vec::new(),
        };
        if let Some(d) = f.delay.take() {
            let dpath = format!("{fpath}.delay");
            let fixed = match d.fault_delay_secifier {
                Some(FaultDelaySecifier::FixedDelay(t)) => {
                    duration(&format!("{dpath}.fixed_delay"), &t)?
                }
                Some(FaultDelaySecifier::HeaderDelay(_)) => {
                    return Err(format!("{dpath}.header_delay: unimplemented"));
                }
                None => return Err(format!("{dpath}.fixed_delay: required")),
            };
            out.delay = Some(FaultDelay {
                fixed_delay: fixed,
                percentage: percent(d.percentage),
            });
        }
        if let Some(a) = f.abort.take() {
            let apath = format!("{fpath}.abort");
            if !a.response_body.is_empty() {
                return Err(format!("{apath}.response_body: unimplemented"));
            }
            let (http_status, grpc_status) = match a.error_type {
                Some(fault_abort::ErrorType::HttpStatus(s)) => {
                    let s = u16::try_from(s)
                        .ok()
                        .filter(|s| (200..600).contains(s))
                        .ok_or_else(|| format!("{apath}.http_status: {s} is not 200-599"))?;
                    (Some(s), None)
                }
                Some(fault_abort::ErrorType::GrpcStatus(s)) => (None, Some(s)),
                Some(fault_abort::ErrorType::HeaderAbort(_)) => {
                    return Err(format!("{apath}.header_abort: unimplemented"));
                }
                None => return Err(format!("{apath}: http_status or grpc_status is required")),
            };
            out.abort = Some(FaultAbort {
                http_status,
                grpc_status,
                percentage: percent(a.percentage),
            });
        }
        for (i, h) in std::mem::take(&mut f.headers).into_iter().enumerate() {
            out.headers
                .push(header_match(&format!("{fpath}.headers[{i}]"), h)?);
        }
        reject_rest(&fpath, &f)?;
        fault = Some(out);
    }
    Ok(fault)
}

/// An Envoy `FractionalPercent` in percent (unset is 0 %, as Envoy reads it).
fn percent(p: Option<envoy_types::pb::envoy::r#type::v3::FractionalPercent>) -> f64 {
    use weft_config::resilience::{Denominator, FractionalPercent};
    let Some(p) = p else { return 0.0 };
    let denominator = match p.denominator {
        1 => Denominator::TenThousand,
        2 => Denominator::Million,
        _ => Denominator::Hundred,
    };
    FractionalPercent {
        numerator: p.numerator,
        denominator,
    }
    .percent()
    .min(100.0)
}

fn route_match(path: &str, m: r::RouteMatch) -> Result<RouteMatch, String> {
    let mut rest = m;
    let ignore_case = rest.case_sensitive.take().is_some_and(|v| !v.value);
    let pm = |exact, prefix, regex| PathMatch {
        exact,
        prefix,
        regex,
        ignore_case,
    };
    let path_match = match rest.path_specifier.take() {
        Some(PathSpecifier::Prefix(p)) if p == "/" && !ignore_case => None,
        Some(PathSpecifier::Prefix(p)) => Some(pm(None, Some(p), None)),
        Some(PathSpecifier::Path(p)) => Some(pm(Some(p), None, None)),
        Some(PathSpecifier::SafeRegex(re)) => {
            if ignore_case {
                return Err(format!(
                    "{path}.case_sensitive: false with safe_regex is unimplemented"
                ));
            }
            Some(pm(None, None, Some(re.regex)))
        }
        Some(_) => {
            return Err(format!(
                "{path}: only prefix, path and safe_regex path matches are implemented"
            ));
        }
        None => {
            return Err(format!(
                "{path}: a path specifier (prefix, path, safe_regex) is required"
            ));
        }
    };
    let mut headers = Vec::new();
    for (i, h) in std::mem::take(&mut rest.headers).into_iter().enumerate() {
        headers.push(header_match(&format!("{path}.headers[{i}]"), h)?);
    }
    let mut query = Vec::new();
    for (i, q) in std::mem::take(&mut rest.query_parameters)
        .into_iter()
        .enumerate()
    {
        let qpath = format!("{path}.query_parameters[{i}]");
        let mut out = QueryMatch {
            name: q.name,
            exact: None,
            regex: None,
            present: None,
        };
        match q.query_parameter_match_specifier {
            Some(Q::PresentMatch(p)) => out.present = Some(p),
            Some(Q::StringMatch(s)) => {
                let (exact, regex) = string_match(&format!("{qpath}.string_match"), s)?;
                out.exact = exact;
                out.regex = regex;
            }
            None => out.present = Some(true),
        }
        query.push(out);
    }
    reject_rest(path, &rest)?;
    Ok(RouteMatch {
        path: path_match,
        headers,
        query,
        methods: Vec::new(),
    })
}

/// A string matcher as Weft's `exact` or a full-match `regex`.
fn string_match(path: &str, s: StringMatcher) -> Result<(Option<String>, Option<String>), String> {
    let ci = if s.ignore_case { "(?i)" } else { "" };
    Ok(match s.match_pattern {
        Some(MatchPattern::Exact(v)) if !s.ignore_case => (Some(v), None),
        Some(MatchPattern::Exact(v)) => (None, Some(format!("{ci}{}", regex::escape(&v)))),
        Some(MatchPattern::Prefix(v)) => (None, Some(format!("{ci}{}.*", regex::escape(&v)))),
        Some(MatchPattern::Suffix(v)) => (None, Some(format!("{ci}.*{}", regex::escape(&v)))),
        Some(MatchPattern::Contains(v)) => (None, Some(format!("{ci}.*{}.*", regex::escape(&v)))),
        Some(MatchPattern::SafeRegex(re)) if !s.ignore_case => (None, Some(re.regex)),
        Some(_) => return Err(format!("{path}: this string matcher is unimplemented")),
        None => return Err(format!("{path}: a match pattern is required")),
    })
}

fn header_match(path: &str, h: r::HeaderMatcher) -> Result<HeaderMatch, String> {
    let mut rest = h;
    let mut out = HeaderMatch {
        name: std::mem::take(&mut rest.name),
        invert: std::mem::take(&mut rest.invert_match),
        ..HeaderMatch::default()
    };
    #[expect(
        deprecated,
        reason = "the deprecated matchers are still sent by control planes"
    )]
    match rest.header_match_specifier.take() {
        None => out.present = Some(true),
        Some(H::ExactMatch(v)) => out.exact = Some(v),
        Some(H::SafeRegexMatch(re)) => out.regex = Some(re.regex),
        Some(H::PresentMatch(p)) => out.present = Some(p),
        Some(H::PrefixMatch(v)) => out.regex = Some(format!("{}.*", regex::escape(&v))),
        Some(H::SuffixMatch(v)) => out.regex = Some(format!(".*{}", regex::escape(&v))),
        Some(H::ContainsMatch(v)) => out.regex = Some(format!(".*{}.*", regex::escape(&v))),
        Some(H::StringMatch(s)) => {
            let (exact, regex) = string_match(&format!("{path}.string_match"), s)?;
            out.exact = exact;
            out.regex = regex;
        }
        Some(H::RangeMatch(_)) => return Err(format!("{path}.range_match: unimplemented")),
    }
    reject_rest(path, &rest)?;
    Ok(out)
}

fn route_action(path: &str, a: r::RouteAction) -> Result<ForwardAction, String> {
    let mut rest = a;
    let mut out = ForwardAction {
        timeout: weft_config::schema::defaults::route_timeout(),
        ..ForwardAction::default()
    };
    match rest.cluster_specifier.take() {
        Some(ClusterSpecifier::Cluster(c)) => out.cluster = Some(c),
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let mut wrest = w;
            for (i, c) in std::mem::take(&mut wrest.clusters).into_iter().enumerate() {
                let cpath = format!("{path}.weighted_clusters.clusters[{i}]");
                let mut crest = c;
                let name = std::mem::take(&mut crest.name);
                let weight = crest.weight.take().map_or(0, |v| v.value);
                reject_rest(&cpath, &crest)?;
                out.weighted_clusters.push(WeightedCluster { name, weight });
            }
            #[expect(deprecated, reason = "cleared: a total weight only restates the sum")]
            {
                wrest.total_weight = None;
            }
            reject_rest(&format!("{path}.weighted_clusters"), &wrest)?;
        }
        Some(_) => {
            return Err(format!(
                "{path}: only cluster and weighted_clusters are implemented"
            ));
        }
        None => return Err(format!("{path}: cluster or weighted_clusters is required")),
    }
    if let Some(t) = rest.timeout.take() {
        out.timeout = duration(&format!("{path}.timeout"), &t)?;
    }
    let prefix = std::mem::take(&mut rest.prefix_rewrite);
    if !prefix.is_empty() {
        out.prefix_rewrite = Some(prefix);
    }
    match rest.host_rewrite_specifier.take() {
        None => {}
        Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => out.host_rewrite = Some(h),
        Some(_) => return Err(format!("{path}: only host_rewrite_literal is implemented")),
    }
    if let Some(p) = rest.retry_policy.take() {
        out.retry_policy = Some(retry_policy(&format!("{path}.retry_policy"), p)?);
    }
    if let Some(rr) = rest.regex_rewrite.take() {
        out.regex_rewrite = Some(regex_rewrite(&format!("{path}.regex_rewrite"), rr)?);
    }
    for (i, h) in std::mem::take(&mut rest.hash_policy)
        .into_iter()
        .enumerate()
    {
        out.hash_policy
            .push(hash_policy(&format!("{path}.hash_policy[{i}]"), h)?);
    }
    for (i, m) in std::mem::take(&mut rest.request_mirror_policies)
        .into_iter()
        .enumerate()
    {
        out.request_mirror_policies
            .push(mirror(&format!("{path}.request_mirror_policies[{i}]"), m)?);
    }
    reject_rest(path, &rest)?;
    Ok(out)
}

/// `regex_rewrite`: Envoy's RE2 substitution (`\1` for a group, `\\` for a backslash) in the
/// regex crate's syntax (`${1}`, `$$` for a dollar).
fn regex_rewrite(
    path: &str,
    rr: envoy_types::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute,
) -> Result<weft_config::schema::RegexRewrite, String> {
    let mut rest = rr;
    let Some(mut pattern) = rest.pattern.take() else {
        return Err(format!("{path}.pattern: required"));
    };
    let regex = std::mem::take(&mut pattern.regex);
    pattern.engine_type = None;
    reject_rest(&format!("{path}.pattern"), &pattern)?;
    let from = std::mem::take(&mut rest.substitution);
    reject_rest(path, &rest)?;
    let mut substitution = String::with_capacity(from.len() + 4);
    let mut chars = from.chars();
    while let Some(c) = chars.next() {
        match c {
            '$' => substitution.push_str("$$"),
            '\\' => match chars.next() {
                Some(d) if d.is_ascii_digit() => {
                    substitution.push_str("${");
                    substitution.push(d);
                    substitution.push('}');
                }
                Some('\\') => substitution.push('\\'),
                _ => {
                    return Err(format!(
                        "{path}.substitution: `{from}`: a backslash must be followed by a digit or a backslash"
                    ));
                }
            },
            c => substitution.push(c),
        }
    }
    Ok(weft_config::schema::RegexRewrite {
        pattern: regex,
        substitution,
    })
}

/// One `hash_policy`: a header, a cookie (without `ttl`: Weft does not generate cookies) or
/// the source IP. `terminal` is accepted: Weft uses the first policy that yields a key.
fn hash_policy(
    path: &str,
    h: r::route_action::HashPolicy,
) -> Result<weft_config::schema::HashPolicy, String> {
    use r::route_action::hash_policy::PolicySpecifier as P;
    let mut rest = h;
    rest.terminal = false;
    let mut out = weft_config::schema::HashPolicy::default();
    match rest.policy_specifier.take() {
        Some(P::Header(mut hd)) => {
            out.header = Some(std::mem::take(&mut hd.header_name));
            reject_rest(&format!("{path}.header"), &hd)?;
        }
        Some(P::Cookie(mut c)) => {
            out.cookie = Some(std::mem::take(&mut c.name));
            reject_rest(&format!("{path}.cookie"), &c)?;
        }
        Some(P::ConnectionProperties(c)) if c.source_ip => out.source_ip = true,
        Some(P::ConnectionProperties(_)) => {
            return Err(format!(
                "{path}.connection_properties.source_ip: must be true"
            ));
        }
        Some(_) => {
            return Err(format!(
                "{path}: only header, cookie and connection_properties are implemented"
            ));
        }
        None => return Err(format!("{path}: a policy is required")),
    }
    reject_rest(path, &rest)?;
    Ok(out)
}

/// One `request_mirror_policies` entry: the shadow cluster and its share (the runtime key is
/// ignored: Weft has no runtime layer; `trace_sampled` is ignored).
fn mirror(
    path: &str,
    m: r::route_action::RequestMirrorPolicy,
) -> Result<weft_config::resilience::MirrorPolicy, String> {
    let mut rest = m;
    let cluster = std::mem::take(&mut rest.cluster);
    if cluster.is_empty() {
        return Err(format!(
            "{path}.cluster: required (cluster_header is unimplemented)"
        ));
    }
    let percentage = match rest.runtime_fraction.take() {
        Some(f) => percent(f.default_value),
        None => 100.0,
    };
    rest.trace_sampled = None;
    reject_rest(path, &rest)?;
    Ok(weft_config::resilience::MirrorPolicy {
        cluster,
        percentage: Some(percentage),
        runtime_fraction: None,
    })
}

fn retry_policy(
    path: &str,
    p: r::RetryPolicy,
) -> Result<weft_config::resilience::RetryPolicy, String> {
    let mut rest = p;
    let mut v = serde_json::json!({
        "retry_on": std::mem::take(&mut rest.retry_on),
        "num_retries": rest.num_retries.take().map_or(1, |n| n.value),
        "retriable_status_codes": std::mem::take(&mut rest.retriable_status_codes),
    });
    if let Some(t) = rest.per_try_timeout.take() {
        let d = duration(&format!("{path}.per_try_timeout"), &t)?;
        v["per_try_timeout"] = format!("{}ms", d.as_millis()).into();
    }
    if let Some(b) = rest.retry_back_off.take() {
        let mut bo = serde_json::json!({});
        if let Some(base) = &b.base_interval {
            let d = duration(&format!("{path}.retry_back_off.base_interval"), base)?;
            bo["base_interval"] = format!("{}ms", d.as_millis()).into();
        }
        if let Some(max) = &b.max_interval {
            let d = duration(&format!("{path}.retry_back_off.max_interval"), max)?;
            bo["max_interval"] = format!("{}ms", d.as_millis()).into();
        }
        v["retry_back_off"] = bo;
    }
    // istiod's default on every route: retry on another host (`previous_hosts`), trying up to
    // `host_selection_retry_max_attempts` picks. Weft always excludes the endpoints a request
    // has tried while others remain, so the predicate changes nothing.
    for (i, p) in std::mem::take(&mut rest.retry_host_predicate)
        .into_iter()
        .enumerate()
    {
        use r::retry_policy::retry_host_predicate::ConfigType;
        let previous_hosts = p.name == "envoy.retry_host_predicates.previous_hosts"
            || matches!(&p.config_type, Some(ConfigType::TypedConfig(a)) if a.type_url
                == "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate");
        if !previous_hosts {
            return Err(format!(
                "{path}.retry_host_predicate[{i}]: `{}` is unimplemented (only \
                 envoy.retry_host_predicates.previous_hosts, which Weft always applies)",
                p.name
            ));
        }
    }
    rest.host_selection_retry_max_attempts = 0;
    reject_rest(path, &rest)?;
    serde_json::from_value(v).map_err(|e| format!("{path}: {e}"))
}

fn redirect(path: &str, a: r::RedirectAction) -> Result<RedirectAction, String> {
    let mut rest = a;
    let mut out = RedirectAction {
        response_code: match rest.response_code {
            0 => 301,
            1 => 302,
            2 => 303,
            3 => 307,
            4 => 308,
            n => return Err(format!("{path}.response_code: unknown value {n}")),
        },
        ..RedirectAction::default()
    };
    rest.response_code = 0;
    let host = std::mem::take(&mut rest.host_redirect);
    out.host = (!host.is_empty()).then_some(host);
    if rest.port_redirect != 0 {
        out.port = Some(
            u16::try_from(rest.port_redirect)
                .map_err(|_| format!("{path}.port_redirect: not a port"))?,
        );
        rest.port_redirect = 0;
    }
    out.strip_query = std::mem::take(&mut rest.strip_query);
    match rest.scheme_rewrite_specifier.take() {
        None => {}
        Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => out.scheme = Some("https".into()),
        Some(SchemeRewriteSpecifier::HttpsRedirect(false)) => {}
        Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => out.scheme = Some(s),
    }
    match rest.path_rewrite_specifier.take() {
        None => {}
        Some(PathRewriteSpecifier::PathRedirect(p)) => out.path = Some(p),
        Some(PathRewriteSpecifier::PrefixRewrite(p)) => out.prefix_rewrite = Some(p),
        Some(_) => return Err(format!("{path}.regex_rewrite: unimplemented")),
    }
    reject_rest(path, &rest)?;
    Ok(out)
}

/// Envoy's header additions and removals as Weft's (request, response) mutations.
fn mutations(
    path: &str,
    req_add: Vec<XHeader>,
    req_remove: Vec<String>,
    resp_add: Vec<XHeader>,
    resp_remove: Vec<String>,
) -> Result<(HeaderMutations, HeaderMutations), String> {
    let one = |which: &str, add: Vec<XHeader>, remove: Vec<String>| {
        let mut m = HeaderMutations {
            remove,
            ..HeaderMutations::default()
        };
        for (i, h) in add.into_iter().enumerate() {
            let hpath = format!("{path}.{which}_headers_to_add[{i}]");
            let mut rest = h;
            let Some(hv) = rest.header.take() else {
                return Err(format!("{hpath}.header: required"));
            };
            let option = HeaderValueOption {
                name: hv.key,
                value: hv.value,
            };
            #[expect(deprecated, reason = "`append` is still sent by control planes")]
            let append = rest.append.take().map(|b| b.value);
            // APPEND_IF_EXISTS_OR_ADD (0, also `append: true`), OVERWRITE_IF_EXISTS_OR_ADD (2).
            match (append, rest.append_action) {
                (Some(true), _) | (None, 0) => m.add.push(option),
                (Some(false), _) | (None, 2) => m.set.push(option),
                (None, 1) => {
                    return Err(format!(
                        "{hpath}.append_action: ADD_IF_ABSENT is unimplemented"
                    ));
                }
                (None, n) => return Err(format!("{hpath}.append_action: {n} is unimplemented")),
            }
            rest.append_action = 0;
            reject_rest(&hpath, &rest)?;
        }
        Ok(m)
    };
    Ok((
        one("request", req_add, req_remove)?,
        one("response", resp_add, resp_remove)?,
    ))
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatchAndSubstitute, RegexMatcher};

    use super::*;

    fn rewrite(substitution: &str) -> Result<String, String> {
        regex_rewrite(
            "r",
            RegexMatchAndSubstitute {
                pattern: Some(RegexMatcher {
                    regex: "^/(a)(b)$".into(),
                    ..Default::default()
                }),
                substitution: substitution.into(),
            },
        )
        .map(|r| r.substitution)
    }

    #[test]
    fn re2_substitutions_become_the_regex_crates() {
        assert_eq!(rewrite("/x/\\2/\\1").as_deref(), Ok("/x/${2}/${1}"));
        assert_eq!(rewrite("/$1\\\\").as_deref(), Ok("/$$1\\"));
        let err = rewrite("/\\x").unwrap_err();
        assert!(err.starts_with("r.substitution: `/\\x`"), "{err}");
    }

    #[test]
    fn fractional_percents_in_percent() {
        use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
        let p = |numerator, denominator| {
            percent(Some(FractionalPercent {
                numerator,
                denominator,
            }))
        };
        assert_eq!(p(50, 0), 50.0);
        assert_eq!(p(2_500, 1), 25.0);
        assert_eq!(p(10, 2), 0.001);
        assert_eq!(p(200, 0), 100.0);
        assert_eq!(percent(None), 0.0);
    }
}
