//! The state plugins of one runtime share ([`SharedState`], owned by the
//! [`WasmRuntime`](crate::WasmRuntime), never process-wide: two proxies in one process share
//! nothing): key-value data with compare-and-swap and queues (both scoped by VM id, as in
//! Envoy), and plugin-defined metrics.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::types::{MetricType, Status};

/// The most bytes a shared-data value may hold.
pub const MAX_SHARED_VALUE: usize = 1024 * 1024;
/// The most items a shared queue holds; more is refused with `InternalFailure`.
pub const MAX_QUEUE_ITEMS: usize = 10_000;

/// What the plugins of one runtime share: data, queues, metrics.
#[derive(Default)]
pub struct SharedState {
    data: Mutex<Data>,
    queues: Mutex<Queues>,
    metrics: Mutex<Metrics>,
    /// Items dropped from full shared queues since start.
    queue_drops: AtomicU64,
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState").finish_non_exhaustive()
    }
}

impl SharedState {
    /// Items dropped from full shared queues since start.
    pub fn queue_drops(&self) -> u64 {
        self.queue_drops.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct Data {
    map: HashMap<(String, String), (Vec<u8>, u32)>,
    /// Per `vm_id`: keys, and bytes of keys and values.
    usage: HashMap<String, (usize, usize)>,
}

/// The bounds of one shared-data write (from the writing plugin's limits).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DataLimits {
    pub(crate) max_keys: usize,
    pub(crate) max_bytes: usize,
}

impl DataLimits {
    #[cfg(test)]
    const NONE: DataLimits = DataLimits {
        max_keys: usize::MAX,
        max_bytes: usize::MAX,
    };
}

/// The bounds of one shared-queue write (from the writing plugin's limits).
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    pub(crate) max_item: usize,
    pub(crate) max_bytes: usize,
}

/// A queue's owner: who gets `on_queue_ready`.
#[derive(Clone)]
pub(crate) struct QueueOwner {
    pub(crate) notify: tokio::sync::mpsc::UnboundedSender<u32>,
}

struct Queue {
    vm_id: String,
    name: String,
    items: VecDeque<Vec<u8>>,
    /// Bytes in `items`.
    bytes: usize,
    owner: Option<QueueOwner>,
}

#[derive(Default)]
struct Queues {
    by_id: HashMap<u32, Queue>,
    next: u32,
}

impl SharedState {
    /// Reads `key` in `vm_id`'s namespace: value and CAS token.
    pub(crate) fn get(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        let d = self.data.lock();
        d.map.get(&(vm_id.to_owned(), key.to_owned())).cloned()
    }
}

impl SharedState {
    /// Writes `key`; a non-zero `cas` must match the current token of an existing key (for a
    /// missing key it is ignored, as in Envoy). A value over
    /// [`MAX_SHARED_VALUE`], a new key past `limits.max_keys`, or a write that takes `vm_id` past
    /// `limits.max_bytes` (keys and values) is refused with `BadArgument`, and nothing changes.
    pub(crate) fn set(
        &self,
        vm_id: &str,
        key: &str,
        value: Vec<u8>,
        cas: u32,
        limits: DataLimits,
    ) -> Status {
        if value.len() > MAX_SHARED_VALUE {
            return Status::BadArgument;
        }
        let mut d = self.data.lock();
        let Data { map, usage } = &mut *d;
        let (keys, bytes) = usage.get(vm_id).copied().unwrap_or((0, 0));
        let entry = map.entry((vm_id.to_owned(), key.to_owned()));
        let (keys, bytes) = match entry {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let (v, token) = o.get_mut();
                if cas != 0 && cas != *token {
                    return Status::CasMismatch;
                }
                let bytes = bytes.saturating_sub(v.len()) + value.len();
                if bytes > limits.max_bytes {
                    return Status::BadArgument;
                }
                *v = value;
                *token = token.wrapping_add(1).max(1);
                (keys, bytes)
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                // A CAS token for a key that does not exist is ignored (Envoy: the write succeeds).
                let bytes = bytes + key.len() + value.len();
                if keys >= limits.max_keys || bytes > limits.max_bytes {
                    return Status::BadArgument;
                }
                v.insert((value, 1));
                (keys + 1, bytes)
            }
        };
        usage.insert(vm_id.to_owned(), (keys, bytes));
        Status::Ok
    }
}

impl SharedState {
    /// Registers (or re-registers) `name` in `vm_id`; the caller becomes the owner.
    pub(crate) fn register_queue(&self, vm_id: &str, name: &str, owner: QueueOwner) -> u32 {
        let mut q = self.queues.lock();
        if let Some((id, queue)) = q
            .by_id
            .iter_mut()
            .find(|(_, v)| v.vm_id == vm_id && v.name == name)
        {
            queue.owner = Some(owner);
            return *id;
        }
        q.next += 1;
        let id = q.next;
        q.by_id.insert(
            id,
            Queue {
                vm_id: vm_id.to_owned(),
                name: name.to_owned(),
                items: VecDeque::new(),
                bytes: 0,
                owner: Some(owner),
            },
        );
        id
    }
}

impl SharedState {
    /// Finds the queue `name` of `vm_id`.
    pub(crate) fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        let q = self.queues.lock();
        q.by_id
            .iter()
            .find(|(_, v)| v.vm_id == vm_id && v.name == name)
            .map(|(id, _)| *id)
    }
}

impl SharedState {
    /// Appends to queue `id` and wakes its owner. An item over `limits.max_item` is refused with
    /// `BadArgument`. A full queue (items, or `limits.max_bytes`) drops its oldest items (a status
    /// other than OK would trap plugins built with the Rust SDK, which panics on it), and counts the
    /// drops.
    pub(crate) fn enqueue(&self, id: u32, value: Vec<u8>, limits: QueueLimits) -> Status {
        if value.len() > limits.max_item || value.len() > limits.max_bytes {
            return Status::BadArgument;
        }
        let mut q = self.queues.lock();
        let Some(queue) = q.by_id.get_mut(&id) else {
            return Status::NotFound;
        };
        while queue.items.len() >= MAX_QUEUE_ITEMS || queue.bytes + value.len() > limits.max_bytes {
            let Some(old) = queue.items.pop_front() else {
                break;
            };
            queue.bytes -= old.len();
            self.queue_drops
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        queue.bytes += value.len();
        queue.items.push_back(value);
        if let Some(owner) = &queue.owner {
            let _ = owner.notify.send(id);
        }
        Status::Ok
    }
}

impl SharedState {
    /// Takes the oldest item of queue `id`.
    pub(crate) fn dequeue(&self, id: u32) -> Result<Vec<u8>, Status> {
        let mut q = self.queues.lock();
        let queue = q.by_id.get_mut(&id).ok_or(Status::NotFound)?;
        let item = queue.items.pop_front().ok_or(Status::Empty)?;
        queue.bytes -= item.len();
        Ok(item)
    }
}

/// One plugin-defined metric.
#[derive(Debug)]
pub struct Metric {
    /// The plugin that defined it.
    pub plugin: String,
    /// The name the plugin gave.
    pub name: String,
    /// Counter, gauge or histogram.
    pub kind: MetricType,
    value: AtomicI64,
    count: AtomicU64,
    buckets: [AtomicU64; 16],
}

/// Histogram bucket upper bounds (powers of 4 from 1), `+Inf` implied.
pub const HISTOGRAM_BOUNDS: [u64; 16] = [
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262_144,
    1_048_576,
    4_194_304,
    16_777_216,
    67_108_864,
    268_435_456,
    1_073_741_824,
];

impl Metric {
    /// Counter/gauge value, or histogram sum.
    pub fn value(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }
    /// Histogram observation count.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
    /// Histogram cumulative bucket counts (same order as [`HISTOGRAM_BOUNDS`]).
    pub fn cumulative_buckets(&self) -> Vec<u64> {
        let mut acc = 0;
        self.buckets
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect()
    }
}

#[derive(Default)]
struct Metrics {
    by_id: Vec<Arc<Metric>>,
    by_key: HashMap<(String, String, u8), u32>,
}

impl SharedState {
    /// Defines (or finds) a metric; ids are process-wide and stable across plugin reloads.
    pub(crate) fn define_metric(&self, plugin: &str, name: &str, kind: MetricType) -> u32 {
        let mut m = self.metrics.lock();
        let key = (plugin.to_owned(), name.to_owned(), kind as u8);
        if let Some(id) = m.by_key.get(&key) {
            return *id;
        }
        let id = m.by_id.len() as u32 + 1;
        m.by_id.push(Arc::new(Metric {
            plugin: plugin.to_owned(),
            name: name.to_owned(),
            kind,
            value: AtomicI64::new(0),
            count: AtomicU64::new(0),
            buckets: Default::default(),
        }));
        m.by_key.insert(key, id);
        id
    }
}

impl SharedState {
    /// The metric `id` (takes the registry's lock: instances cache the handle, see
    /// `HostState::metric`).
    pub(crate) fn metric(&self, id: u32) -> Option<Arc<Metric>> {
        let m = self.metrics.lock();
        m.by_id.get((id as usize).checked_sub(1)?).cloned()
    }
}

/// `proxy_increment_metric`.
pub(crate) fn increment(m: Option<&Metric>, delta: i64) -> Status {
    let Some(m) = m else {
        return Status::NotFound;
    };
    match m.kind {
        MetricType::Counter if delta < 0 => Status::BadArgument,
        MetricType::Counter | MetricType::Gauge => {
            m.value.fetch_add(delta, Ordering::Relaxed);
            Status::Ok
        }
        MetricType::Histogram => Status::BadArgument,
    }
}

/// `proxy_record_metric`.
pub(crate) fn record(m: Option<&Metric>, value: u64) -> Status {
    let Some(m) = m else {
        return Status::NotFound;
    };
    match m.kind {
        // Envoy adds to a counter (it never goes down).
        MetricType::Counter => {
            m.value.fetch_add(value as i64, Ordering::Relaxed);
        }
        MetricType::Gauge => m.value.store(value as i64, Ordering::Relaxed),
        MetricType::Histogram => {
            m.value.fetch_add(value as i64, Ordering::Relaxed);
            m.count.fetch_add(1, Ordering::Relaxed);
            let i = HISTOGRAM_BOUNDS
                .iter()
                .position(|b| value <= *b)
                .unwrap_or(HISTOGRAM_BOUNDS.len() - 1);
            if value <= HISTOGRAM_BOUNDS[i] {
                m.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Status::Ok
}

/// `proxy_get_metric`: histograms are not readable (as in Envoy).
pub(crate) fn get_metric(m: Option<&Metric>) -> Result<u64, Status> {
    let m = m.ok_or(Status::NotFound)?;
    match m.kind {
        MetricType::Histogram => Err(Status::BadArgument),
        _ => Ok(m.value.load(Ordering::Relaxed) as u64),
    }
}

impl SharedState {
    /// Every plugin-defined metric, for `/metrics`.
    pub fn all_metrics(&self) -> Vec<Arc<Metric>> {
        self.metrics.lock().by_id.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_semantics() {
        let st = SharedState::default();
        // As Envoy: a token for a key that does not exist yet is ignored.
        assert_eq!(
            st.set("t-vm", "k", b"a".to_vec(), 7, DataLimits::NONE),
            Status::Ok
        );
        let (v, cas) = st.get("t-vm", "k").unwrap();
        assert_eq!(v, b"a");
        assert_eq!(
            st.set("t-vm", "k", b"b".to_vec(), cas + 1, DataLimits::NONE),
            Status::CasMismatch
        );
        assert_eq!(
            st.set("t-vm", "k", b"b".to_vec(), cas, DataLimits::NONE),
            Status::Ok
        );
        assert_eq!(st.get("t-vm", "k").unwrap().0, b"b");
        assert!(st.get("other-vm", "k").is_none(), "namespaced by VM id");
    }

    #[test]
    fn shared_data_is_bounded_per_vm_in_keys_and_bytes() {
        let st = SharedState::default();
        let l = DataLimits {
            max_keys: 2,
            max_bytes: 10,
        };
        assert_eq!(st.set("b-vm", "a", b"12".to_vec(), 0, l), Status::Ok); // 3 bytes
        assert_eq!(st.set("b-vm", "b", b"12".to_vec(), 0, l), Status::Ok); // 6 bytes
        assert_eq!(
            st.set("b-vm", "c", Vec::new(), 0, l),
            Status::BadArgument,
            "a third key"
        );
        assert_eq!(
            st.set("b-vm", "a", b"1234567".to_vec(), 0, l),
            Status::BadArgument,
            "11 bytes"
        );
        assert_eq!(st.set("b-vm", "a", b"123456".to_vec(), 0, l), Status::Ok); // 10 bytes
        assert_eq!(st.get("b-vm", "a").unwrap().0, b"123456");
        assert_eq!(
            st.set("b-vm2", "c", Vec::new(), 0, l),
            Status::Ok,
            "per vm_id"
        );
    }

    #[test]
    fn shared_queues_are_bounded_in_item_size_and_bytes() {
        let st = SharedState::default();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let id = st.register_queue("qb-vm", "q", QueueOwner { notify: tx });
        let l = QueueLimits {
            max_item: 4,
            max_bytes: 8,
        };
        assert_eq!(st.enqueue(id, b"12345".to_vec(), l), Status::BadArgument);
        for item in [b"aaaa", b"bbbb", b"cccc"] {
            assert_eq!(st.enqueue(id, item.to_vec(), l), Status::Ok);
        }
        // 12 bytes do not fit in 8: the oldest item was dropped.
        assert_eq!(st.dequeue(id).unwrap(), b"bbbb");
        assert_eq!(st.dequeue(id).unwrap(), b"cccc");
        assert_eq!(st.dequeue(id), Err(Status::Empty));
    }

    #[test]
    fn counters_refuse_negative_deltas_and_histograms_are_unreadable() {
        let st = SharedState::default();
        let id = st.define_metric("p", "c", MetricType::Counter);
        let c = st.metric(id);
        let c = c.as_deref();
        assert_eq!(increment(c, 2), Status::Ok);
        assert_eq!(increment(c, -1), Status::BadArgument);
        assert_eq!(get_metric(c), Ok(2));
        // `proxy_record_metric` on a counter adds, as in Envoy.
        assert_eq!(record(c, 3), Status::Ok);
        assert_eq!(get_metric(c), Ok(5));
        let h = st.metric(st.define_metric("p", "h", MetricType::Histogram));
        assert_eq!(record(h.as_deref(), 5), Status::Ok);
        assert_eq!(get_metric(h.as_deref()), Err(Status::BadArgument));
        assert_eq!(
            increment(st.metric(9_999_999).as_deref(), 1),
            Status::NotFound
        );
        assert_eq!(
            st.define_metric("p", "c", MetricType::Counter),
            id,
            "same key, same id"
        );
    }

    #[test]
    fn two_states_share_nothing() {
        let (a, b) = (SharedState::default(), SharedState::default());
        assert_eq!(
            a.set("vm", "k", b"a".to_vec(), 0, DataLimits::NONE),
            Status::Ok
        );
        assert!(b.get("vm", "k").is_none());
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        a.register_queue("vm", "q", QueueOwner { notify: tx });
        assert!(b.resolve_queue("vm", "q").is_none());
        a.define_metric("p", "c", MetricType::Counter);
        assert!(b.all_metrics().is_empty());
    }
}
