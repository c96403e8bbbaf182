//! Interface discovery: which links to attach to, and the reconciler that
//! keeps attachments in step with link events.
//!
//! The event source (rtnetlink) lives with the kernel code in
//! `netscope-bpf`; this module is the policy and the bookkeeping, so it is
//! tested without a kernel.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use regex::Regex;

use crate::attach::{AttachError, Attacher, Attachment, Interface};

/// Default host-side name prefixes of pod interfaces:
/// - `veth`: generic veth CNIs and newer AWS VPC CNI
/// - `eni`: AWS VPC CNI
/// - `cali`: Calico
/// - `lxc`: Cilium
/// - `vlan`: AWS security-groups-for-pods branch interfaces
/// - `gke`: GKE
pub const DEFAULT_PREFIXES: &[&str] = &["veth", "eni", "cali", "lxc", "vlan", "gke"];

/// What kind of link an interface is (from `IFLA_INFO_KIND`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LinkKind {
    /// A veth pair end: the usual pod link.
    Veth,
    /// A netkit device (kernel 6.7+).
    Netkit,
    /// Anything else: bridge, vlan, vxlan, physical (no kind), ...
    Other(String),
}

impl LinkKind {
    /// Parses the kernel's kind string (`"veth"`, `"netkit"`, ...). A
    /// physical device has no kind: pass `""`.
    pub fn from_kind(kind: &str) -> Self {
        match kind {
            "veth" => LinkKind::Veth,
            "netkit" => LinkKind::Netkit,
            other => LinkKind::Other(other.to_string()),
        }
    }

    /// True for the kinds that carry one pod's traffic once.
    pub fn is_pod_link(&self) -> bool {
        matches!(self, LinkKind::Veth | LinkKind::Netkit)
    }
}

/// A link as the event source reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Name and index.
    pub iface: Interface,
    /// Kind.
    pub kind: LinkKind,
}

/// A change in the set of links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link appeared or changed (RTM_NEWLINK).
    Added(Link),
    /// A link went away (RTM_DELLINK).
    Removed(Interface),
    /// The full current set (initial dump, or a resync after the event
    /// socket overflowed): links not in it are gone.
    Snapshot(Vec<Link>),
}

/// Errors in the discovery configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoverError {
    /// A regular expression did not compile.
    #[error("invalid {which} regex {pattern:?}")]
    Regex {
        /// `include` or `exclude`.
        which: &'static str,
        /// The pattern.
        pattern: String,
        /// The parser's error.
        #[source]
        source: regex::Error,
    },
    /// An empty prefix would match every interface.
    #[error("empty interface prefix (it would match every interface, including the uplink)")]
    EmptyPrefix,
}

/// Which interfaces are pod links to attach to.
///
/// A link is selected when it is a veth or netkit device, its name starts
/// with one of the prefixes or matches `include`, and it does not match
/// `exclude`. Bridges, VLAN sub-interfaces (AWS `vlan.eth.1`) and the
/// uplink are never selected: they carry the same packets again.
#[derive(Debug, Clone)]
pub struct InterfaceFilter {
    prefixes: Vec<String>,
    include: Option<Regex>,
    exclude: Option<Regex>,
}

impl Default for InterfaceFilter {
    fn default() -> Self {
        InterfaceFilter {
            prefixes: DEFAULT_PREFIXES.iter().map(|p| p.to_string()).collect(),
            include: None,
            exclude: None,
        }
    }
}

impl InterfaceFilter {
    /// A filter with the given prefixes and optional include/exclude regexes.
    ///
    /// # Errors
    /// [`DiscoverError`] for an empty prefix or a bad regex.
    pub fn new<S: AsRef<str>>(
        prefixes: &[S],
        include: Option<&str>,
        exclude: Option<&str>,
    ) -> Result<Self, DiscoverError> {
        let prefixes: Vec<String> = prefixes
            .iter()
            .map(|p| p.as_ref().trim().to_string())
            .collect();
        if prefixes.iter().any(String::is_empty) {
            return Err(DiscoverError::EmptyPrefix);
        }
        let compile = |which, p: Option<&str>| {
            p.map(|p| {
                Regex::new(p).map_err(|source| DiscoverError::Regex {
                    which,
                    pattern: p.to_string(),
                    source,
                })
            })
            .transpose()
        };
        Ok(InterfaceFilter {
            prefixes,
            include: compile("include", include)?,
            exclude: compile("exclude", exclude)?,
        })
    }

    /// The prefixes.
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    /// True when `link` should be attached to.
    pub fn matches(&self, link: &Link) -> bool {
        if !link.kind.is_pod_link() {
            return false;
        }
        let name = link.iface.name.as_str();
        let named = self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
            || self.include.as_ref().is_some_and(|r| r.is_match(name));
        named && !self.exclude.as_ref().is_some_and(|r| r.is_match(name))
    }
}

/// Per-interface state kept by the [`Reconciler`].
#[derive(Debug)]
struct Tracked {
    iface: Interface,
    attachments: Vec<Box<dyn Attachment>>,
}

/// Keeps netscope attached, in both directions, to every selected link, and
/// detaches from links that go away.
///
/// One interface that refuses an attach does not stop the others: the error
/// is logged with interface, direction and mode, counted per interface, and
/// retried on the link's next event. An interface is attached in both
/// directions or in none, so that no flow is counted one way only.
pub struct Reconciler {
    attacher: Arc<dyn Attacher>,
    filter: InterfaceFilter,
    tracked: HashMap<u32, Tracked>,
    errors: BTreeMap<String, u64>,
    attached_total: u64,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("mode", &self.attacher.mode())
            .field("filter", &self.filter)
            .field("tracked", &self.tracked.len())
            .finish()
    }
}

impl Reconciler {
    /// A reconciler attaching with `attacher` to links `filter` selects.
    pub fn new(attacher: Arc<dyn Attacher>, filter: InterfaceFilter) -> Self {
        Reconciler {
            attacher,
            filter,
            tracked: HashMap::new(),
            errors: BTreeMap::new(),
            attached_total: 0,
        }
    }

    /// Applies one event.
    pub fn handle(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Added(link) => self.added(&link),
            LinkEvent::Removed(iface) => self.removed(iface.ifindex),
            LinkEvent::Snapshot(links) => {
                let present: std::collections::HashSet<u32> =
                    links.iter().map(|l| l.iface.ifindex).collect();
                let gone: Vec<u32> = self
                    .tracked
                    .keys()
                    .copied()
                    .filter(|i| !present.contains(i))
                    .collect();
                for ifindex in gone {
                    self.removed(ifindex);
                }
                for link in &links {
                    self.added(link);
                }
            }
        }
        metrics::gauge!(crate::metrics::AGENT_INTERFACES_ATTACHED).set(self.tracked.len() as f64);
    }

    fn added(&mut self, link: &Link) {
        let selected = self.filter.matches(link);
        if let Some(t) = self.tracked.get(&link.iface.ifindex) {
            if t.iface.name == link.iface.name && selected {
                return; // already attached; a NEWLINK for a state change
            }
            // Renamed (or the index was reused): start over.
            self.removed(link.iface.ifindex);
        }
        if !selected {
            return;
        }
        // Both directions as one step, both or none (issue 15): the
        // attacher undoes the half that worked.
        let attachments: Vec<Box<dyn Attachment>> = match self.attacher.attach_both(&link.iface) {
            Ok(both) => both.into(),
            Err(e) => {
                self.attach_failed(&link.iface, &e);
                return;
            }
        };
        for a in &attachments {
            let direction = a.direction();
            tracing::info!(iface = ?link.iface.name, ifindex = link.iface.ifindex, direction = %direction, hook = direction.hook_name(), mode = %a.mode(), "attached");
        }
        self.attached_total += 1;
        self.tracked.insert(
            link.iface.ifindex,
            Tracked {
                iface: link.iface.clone(),
                attachments,
            },
        );
    }

    fn attach_failed(&mut self, iface: &Interface, e: &AttachError) {
        // A link deleted between its event and our attach is not an error.
        let vanished = matches!(e, AttachError::Attach { source, .. } if matches!(source.raw_os_error(), Some(19) | Some(6)));
        if vanished {
            tracing::debug!(iface = ?iface.name, ifindex = iface.ifindex, "interface vanished before attach");
            return;
        }
        tracing::error!(error = ?error_chain(e), "attach failed; will retry on the interface's next event");
        *self.errors.entry(iface.name.clone()).or_default() += 1;
        metrics::counter!(crate::metrics::AGENT_ATTACH_ERRORS_TOTAL).increment(1);
    }

    fn removed(&mut self, ifindex: u32) {
        if let Some(t) = self.tracked.remove(&ifindex) {
            for a in t.attachments {
                let (direction, mode) = (a.direction(), a.mode());
                match a.detach() {
                    Ok(()) => {
                        tracing::info!(iface = ?t.iface.name, ifindex, direction = %direction, mode = %mode, "detached")
                    }
                    Err(e) => tracing::warn!(error = ?error_chain(&e), "detach failed"),
                }
            }
        }
    }

    /// Detaches everything (on shutdown). Returns the detach errors.
    pub fn detach_all(&mut self) -> Vec<AttachError> {
        let mut errors = Vec::new();
        for (ifindex, t) in self.tracked.drain() {
            for a in t.attachments {
                let (direction, mode) = (a.direction(), a.mode());
                match a.detach() {
                    Ok(()) => {
                        tracing::info!(iface = ?t.iface.name, ifindex, direction = %direction, mode = %mode, "detached")
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        metrics::gauge!(crate::metrics::AGENT_INTERFACES_ATTACHED).set(0.0);
        errors
    }

    /// Interfaces currently attached (both directions).
    pub fn attached(&self) -> Vec<Interface> {
        let mut v: Vec<Interface> = self.tracked.values().map(|t| t.iface.clone()).collect();
        v.sort_by_key(|i| i.ifindex);
        v
    }

    /// How many interfaces were attached since start (including ones gone since).
    pub fn attached_total(&self) -> u64 {
        self.attached_total
    }

    /// Attach failures per interface name.
    pub fn errors(&self) -> &BTreeMap<String, u64> {
        &self.errors
    }
}

pub use crate::error_chain;

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::attach::AttachMode;
    use crate::flow::Direction;

    fn link(name: &str, ifindex: u32, kind: &str) -> Link {
        Link {
            iface: Interface {
                name: name.into(),
                ifindex,
            },
            kind: LinkKind::from_kind(kind),
        }
    }

    #[test]
    fn default_filter_selects_pod_links_only() {
        let f = InterfaceFilter::default();
        for name in [
            "veth1a2b",
            "eni3c4d",
            "cali12345",
            "lxc0f9e",
            "vlan5e6f",
            "gke9a8b",
        ] {
            assert!(
                f.matches(&link(name, 1, "veth")),
                "{name} should be selected"
            );
        }
        assert!(f.matches(&link("lxc1", 1, "netkit")));
        // Same prefix, wrong kind: AWS branch VLAN sub-interface, a bridge, a physical NIC.
        assert!(!f.matches(&link("vlan.eth.1", 1, "vlan")));
        assert!(!f.matches(&link("vethbr0", 1, "bridge")));
        assert!(!f.matches(&link("eni0", 1, "")));
        // Right kind, foreign name.
        assert!(!f.matches(&link("eth0", 1, "veth")));
        assert!(!f.matches(&link("docker0", 1, "veth")));
    }

    #[test]
    fn include_and_exclude_regexes() {
        let f = InterfaceFilter::new(&["cali"], Some("^tap[0-9]+$"), Some("^cali-skip")).unwrap();
        assert!(f.matches(&link("cali1", 1, "veth")));
        assert!(f.matches(&link("tap7", 1, "veth")));
        assert!(!f.matches(&link("cali-skip3", 1, "veth")));
        assert!(!f.matches(&link("veth1", 1, "veth")));
        assert!(matches!(
            InterfaceFilter::new(&["x"], Some("("), None),
            Err(DiscoverError::Regex {
                which: "include",
                ..
            })
        ));
        assert!(matches!(
            InterfaceFilter::new(&["veth", " "], None, None),
            Err(DiscoverError::EmptyPrefix)
        ));
    }

    /// A real-enough attacher: records what is attached, and fails for
    /// names it is told to refuse (on one direction only).
    #[derive(Debug, Default)]
    struct Recording {
        live: Arc<Mutex<Vec<(u32, Direction)>>>,
        refuse_egress: Vec<String>,
    }

    #[derive(Debug)]
    struct Rec {
        iface: Interface,
        direction: Direction,
        live: Arc<Mutex<Vec<(u32, Direction)>>>,
    }

    impl Attachment for Rec {
        fn interface(&self) -> &Interface {
            &self.iface
        }
        fn direction(&self) -> Direction {
            self.direction
        }
        fn mode(&self) -> AttachMode {
            AttachMode::Tcx
        }
        fn detach(self: Box<Self>) -> Result<(), AttachError> {
            self.live
                .lock()
                .unwrap()
                .retain(|e| *e != (self.iface.ifindex, self.direction));
            Ok(())
        }
    }

    impl Attacher for Recording {
        fn attach(
            &self,
            iface: &Interface,
            direction: Direction,
        ) -> Result<Box<dyn Attachment>, AttachError> {
            if direction == Direction::ToPod && self.refuse_egress.contains(&iface.name) {
                return Err(AttachError::Attach {
                    iface: iface.clone(),
                    direction,
                    mode: AttachMode::Tcx,
                    source: std::io::Error::from_raw_os_error(1),
                });
            }
            self.live.lock().unwrap().push((iface.ifindex, direction));
            Ok(Box::new(Rec {
                iface: iface.clone(),
                direction,
                live: self.live.clone(),
            }))
        }
        fn mode(&self) -> AttachMode {
            AttachMode::Tcx
        }
    }

    #[test]
    fn reconciler_follows_events_and_isolates_failures() {
        let rec = Arc::new(Recording {
            refuse_egress: vec!["vethbad".into()],
            ..Default::default()
        });
        let live = rec.live.clone();
        let mut r = Reconciler::new(rec, InterfaceFilter::default());
        r.handle(LinkEvent::Snapshot(vec![
            link("eth0", 1, ""),
            link("veth1", 2, "veth"),
            link("vethbad", 3, "veth"),
        ]));
        // veth1 both ways; vethbad none (its ingress was undone); eth0 never.
        assert_eq!(
            *live.lock().unwrap(),
            vec![(2, Direction::FromPod), (2, Direction::ToPod)]
        );
        assert_eq!(r.errors().get("vethbad"), Some(&1));
        // A repeated NEWLINK does not attach twice; a new link is attached.
        r.handle(LinkEvent::Added(link("veth1", 2, "veth")));
        r.handle(LinkEvent::Added(link("cali9", 4, "veth")));
        assert_eq!(live.lock().unwrap().len(), 4);
        assert_eq!(r.attached().len(), 2);
        // Removal detaches; a snapshot without cali9 detaches it too.
        r.handle(LinkEvent::Removed(Interface {
            name: "veth1".into(),
            ifindex: 2,
        }));
        assert_eq!(
            *live.lock().unwrap(),
            vec![(4, Direction::FromPod), (4, Direction::ToPod)]
        );
        r.handle(LinkEvent::Snapshot(vec![link("eth0", 1, "")]));
        assert!(live.lock().unwrap().is_empty());
        // Index reuse under another name: re-attached under the new name.
        r.handle(LinkEvent::Added(link("eni5", 9, "veth")));
        r.handle(LinkEvent::Added(link("lxc5", 9, "veth")));
        assert_eq!(
            r.attached(),
            vec![Interface {
                name: "lxc5".into(),
                ifindex: 9
            }]
        );
        assert!(r.detach_all().is_empty());
        assert!(live.lock().unwrap().is_empty());
        assert_eq!(r.attached_total(), 4);
    }
}
