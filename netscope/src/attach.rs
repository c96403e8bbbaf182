//! Attaching the capture program to pod interfaces.

use std::fmt;

use crate::flow::Direction;

/// How the program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// BPF links on the TCX hooks (kernel 6.6+).
    Tcx,
    /// clsact qdisc + cls_bpf filter in direct-action mode (kernel 5.10+).
    Tc,
    /// Try TCX, fall back to legacy TC when the kernel does not support it.
    Auto,
}

impl AttachMode {
    /// Lower-case name, as used in flags and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Tcx => "tcx",
            AttachMode::Tc => "tc",
            AttachMode::Auto => "auto",
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcx" => Ok(AttachMode::Tcx),
            "tc" | "legacy" => Ok(AttachMode::Tc),
            "auto" => Ok(AttachMode::Auto),
            other => Err(format!(
                "unknown attach mode {other:?}: expected auto, tcx or tc"
            )),
        }
    }
}

/// A network interface in the current network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Interface {
    /// Interface name, e.g. `eni1a2b3c`.
    pub name: String,
    /// Kernel interface index.
    pub ifindex: u32,
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (ifindex {})", self.name, self.ifindex)
    }
}

/// Errors from attaching or detaching.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The kernel refused the attach.
    #[error("attaching to {iface} {direction} in {mode} mode failed")]
    Attach {
        /// Interface.
        iface: Interface,
        /// Direction (hook).
        direction: Direction,
        /// Mode that was tried.
        mode: AttachMode,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused to remove an attachment.
    #[error("detaching from {iface} {direction} in {mode} mode failed")]
    Detach {
        /// Interface.
        iface: Interface,
        /// Direction (hook).
        direction: Direction,
        /// Mode of the attachment.
        mode: AttachMode,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// Pinning or unpinning a link in bpffs failed.
    #[error("pin {} for {iface} {direction}", path.display())]
    Pin {
        /// Interface.
        iface: Interface,
        /// Direction (hook).
        direction: Direction,
        /// bpffs path.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// One attachment of the program to one interface and direction. Dropping
/// it, or calling [`Attachment::detach`], removes exactly what was attached.
pub trait Attachment: Send + fmt::Debug {
    /// The interface.
    fn interface(&self) -> &Interface;
    /// The direction (hook).
    fn direction(&self) -> Direction;
    /// The mode actually used (never [`AttachMode::Auto`]).
    fn mode(&self) -> AttachMode;
    /// Removes the attachment and reports a failure instead of only logging it.
    ///
    /// # Errors
    /// [`AttachError::Detach`] when the kernel refuses; the attachment is gone
    /// from netscope's view either way.
    fn detach(self: Box<Self>) -> Result<(), AttachError>;
}

/// Attaches the capture program to interfaces.
pub trait Attacher: Send + Sync {
    /// Attaches to `iface` in `direction`.
    ///
    /// # Errors
    /// [`AttachError::Attach`], naming interface, direction and mode.
    fn attach(
        &self,
        iface: &Interface,
        direction: Direction,
    ) -> Result<Box<dyn Attachment>, AttachError>;

    /// Attaches to both directions of `iface` as one step: both or neither,
    /// `[FromPod, ToPod]`. The default attaches one after the other and
    /// undoes the first when the second fails; backends override it to put
    /// the two attaches back to back.
    ///
    /// # Errors
    /// [`AttachError::Attach`] of the direction that failed.
    fn attach_both(&self, iface: &Interface) -> Result<[Box<dyn Attachment>; 2], AttachError> {
        let a = self.attach(iface, Direction::FromPod)?;
        match self.attach(iface, Direction::ToPod) {
            Ok(b) => Ok([a, b]),
            Err(e) => {
                let _ = a.detach();
                Err(e)
            }
        }
    }

    /// The configured mode (may be [`AttachMode::Auto`]).
    fn mode(&self) -> AttachMode;
}
