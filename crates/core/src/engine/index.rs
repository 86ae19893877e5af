//! Derived indexes: dense node slots, each running rollout's roles by slot, and the exposure
//! records they point at. Serde skips them; they are rebuilt after deserialization.

use super::*;

/// One node reached by a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Exposure {
    /// What the node was assigned just before this rollout reached it; a rollback restores it.
    pub(super) before: Option<VersionHash>,
    /// The stage that reached it.
    pub(super) stage: usize,
    pub(super) acked: bool,
    pub(super) rejected: bool,
    /// The latest report of any kind from this node about this unit (or the exposure time):
    /// what silence is measured from.
    pub(super) last_report_ms: TimeMs,
    /// The node is in a maintenance window: its health counts nowhere, it is never silent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) maintenance: bool,
}

/// The nodes a rollout reached, with their records: a dense vector, so that the role index can
/// point at a record by position, and a map from id to position. Serializes as a map from node
/// id to record; equality is that of the maps (order aside).
#[derive(Debug, Clone, Default)]
pub(super) struct Exposures {
    pub(super) entries: Vec<(NodeId, Exposure)>,
    pub(super) position: LookupMap<NodeId, u32>,
}

impl Exposures {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn position_of(&self, node: &NodeId) -> Option<u32> {
        self.position.get(node).copied()
    }

    pub(super) fn contains_key(&self, node: &NodeId) -> bool {
        self.position.contains_key(node)
    }

    pub(super) fn get(&self, node: &NodeId) -> Option<&Exposure> {
        let at = self.position_of(node)?;
        self.entries.get(at as usize).map(|(_, exposure)| exposure)
    }

    pub(super) fn get_mut(&mut self, node: &NodeId) -> Option<&mut Exposure> {
        let at = self.position_of(node)?;
        self.entries
            .get_mut(at as usize)
            .map(|(_, exposure)| exposure)
    }

    /// The record at `position` (from the role index, which [`Engine::check_derived_indexes`]
    /// keeps honest): no hashing and no comparison of ids on the `Health` path.
    pub(super) fn get_at_mut(&mut self, position: u32) -> Option<&mut Exposure> {
        self.entries
            .get_mut(position as usize)
            .map(|(_, exposure)| exposure)
    }

    /// Inserts or replaces `node`'s record; returns the replaced one.
    pub(super) fn insert(&mut self, node: NodeId, exposure: Exposure) -> Option<Exposure> {
        if let Some(existing) = self.get_mut(&node) {
            return Some(std::mem::replace(existing, exposure));
        }
        // At most one record per node, and nodes are at most MAX_NODES: it always fits.
        let at = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        self.position.insert(node.clone(), at);
        self.entries.push((node, exposure));
        None
    }

    /// Removes `node`'s record; returns it, and the node whose record moved into its position
    /// (the last one), if any.
    pub(super) fn remove(&mut self, node: &NodeId) -> Option<(Exposure, Option<(NodeId, u32)>)> {
        let at = self.position.remove(node)?;
        let index = at as usize;
        if index >= self.entries.len() {
            return None;
        }
        let (_, removed) = self.entries.swap_remove(index);
        let moved = self.entries.get(index).map(|(id, _)| (id.clone(), at));
        if let Some((id, _)) = &moved {
            self.position.insert(id.clone(), at);
        }
        Some((removed, moved))
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &NodeId> + '_ {
        self.entries.iter().map(|(node, _)| node)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&NodeId, &Exposure)> + '_ {
        self.entries.iter().map(|(node, exposure)| (node, exposure))
    }
}

impl PartialEq for Exposures {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .all(|(node, exposure)| other.get(node) == Some(exposure))
    }
}

impl Serialize for Exposures {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Exposures {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<NodeId, Exposure>::deserialize(deserializer)?;
        let mut exposures = Exposures::default();
        for (node, exposure) in map {
            exposures.insert(node, exposure);
        }
        Ok(exposures)
    }
}

/// A cache derived from the engine's state: skipped by serde and rebuilt after
/// deserialization, and left out of equality (two engines are equal when their states are,
/// whatever their caches hold).
#[derive(Clone, Default)]
pub(super) struct Derived<T>(pub(super) T);

impl<T> PartialEq for Derived<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> std::fmt::Debug for Derived<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Derived(..)")
    }
}

/// Bytes of a node id kept inline in the slot table: ids up to this long are compared there,
/// without following a pointer to the id's text (the `Health` path is bound by cache misses).
const SHORT_ID_BYTES: usize = 31;

/// A node id of at most [`SHORT_ID_BYTES`] bytes, inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ShortId {
    pub(super) len: u8,
    pub(super) bytes: [u8; SHORT_ID_BYTES],
}

impl ShortId {
    pub(super) fn of(node: &NodeId) -> Option<Self> {
        let text = node.as_str().as_bytes();
        let mut bytes = [0u8; SHORT_ID_BYTES];
        bytes.get_mut(..text.len())?.copy_from_slice(text);
        Some(Self {
            len: u8::try_from(text.len()).ok()?,
            bytes,
        })
    }
}

/// Dense slots for node ids, so that per-rollout tables are vectors indexed by slot.
/// Derived from the fleet table; which slot a node gets never reaches an output.
#[derive(Debug, Clone, Default)]
pub(super) struct FleetIndex {
    /// False after deserialization: the next step rebuilds every derived index.
    pub(super) built: bool,
    /// Slots of ids of at most [`SHORT_ID_BYTES`] bytes.
    pub(super) short_slots: LookupMap<ShortId, u32>,
    /// Slots of longer ids.
    pub(super) long_slots: LookupMap<NodeId, u32>,
    /// The short id in each slot, to check [`FleetIndex::next_guess`] without hashing.
    pub(super) short_by_slot: Vec<Option<ShortId>>,
    /// The slot after the latest one looked up on the `Health` path: fleets report in rounds,
    /// in a stable order, so the next report is likely from that slot's node.
    pub(super) next_guess: u32,
    /// Slots of removed nodes, reused first.
    pub(super) free: Vec<u32>,
    /// Slots handed out so far (the highest slot + 1); at most [`MAX_NODES`].
    pub(super) slots_used: u32,
}

impl FleetIndex {
    pub(super) fn slot(&self, node: &NodeId) -> Option<u32> {
        match ShortId::of(node) {
            Some(short) => self.short_slots.get(&short).copied(),
            None => self.long_slots.get(node).copied(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.short_slots.len().saturating_add(self.long_slots.len())
    }

    /// [`FleetIndex::slot`], trying first the slot after the previous lookup's: a sequential
    /// read instead of a random one into the table when reports come in a stable order.
    pub(super) fn slot_hinted(&mut self, node: &NodeId) -> Option<u32> {
        let Some(short) = ShortId::of(node) else {
            return self.long_slots.get(node).copied();
        };
        let guess = self.next_guess;
        let slot = if self.short_by_slot.get(guess as usize) == Some(&Some(short)) {
            guess
        } else {
            self.short_slots.get(&short).copied()?
        };
        self.next_guess = slot.saturating_add(1);
        Some(slot)
    }

    pub(super) fn set_short(&mut self, slot: u32, short: Option<ShortId>) {
        let index = slot as usize;
        if short.is_some() && self.short_by_slot.len() <= index {
            self.short_by_slot.resize(index.saturating_add(1), None);
        }
        if let Some(entry) = self.short_by_slot.get_mut(index) {
            *entry = short;
        }
    }

    /// The node's slot, given one when it has none.
    pub(super) fn insert(&mut self, node: &NodeId) -> u32 {
        if let Some(slot) = self.slot(node) {
            return slot;
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            let fresh = self.slots_used;
            self.slots_used = self.slots_used.saturating_add(1);
            fresh
        });
        let short = ShortId::of(node);
        match short {
            Some(short) => self.short_slots.insert(short, slot),
            None => self.long_slots.insert(node.clone(), slot),
        };
        self.set_short(slot, short);
        slot
    }

    pub(super) fn remove(&mut self, node: &NodeId) -> Option<u32> {
        let slot = match ShortId::of(node) {
            Some(short) => self.short_slots.remove(&short),
            None => self.long_slots.remove(node),
        }?;
        self.set_short(slot, None);
        self.free.push(slot);
        Some(slot)
    }
}

/// Where one node stands for one running rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Role {
    /// No node holds this slot.
    #[default]
    Vacant,
    /// The rollout reached the node (canary once it ACKed); its record's position.
    Exposed { position: u32 },
    /// Not reached, and the current stage's selector matches it. `upcoming`: the next stage
    /// (or, while the stage observes, this one) will expose it, so its health now is its
    /// pre-period.
    StageBaseline { upcoming: bool },
    /// Not reached, and the current stage's selector does not match it.
    FleetBaseline { upcoming: bool },
}

/// Per running rollout: every node's [`Role`] by slot, and the baseline counts, kept up to date
/// on every change instead of being counted over the fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct RoleIndex {
    pub(super) roles: Vec<Role>,
    /// Unexposed nodes that the current stage's selector matches.
    pub(super) stage_unexposed: u64,
    /// Every unexposed node of the fleet (including the ones above).
    pub(super) fleet_unexposed: u64,
}

impl RoleIndex {
    pub(super) fn role(&self, slot: u32) -> Role {
        self.roles.get(slot as usize).copied().unwrap_or_default()
    }

    pub(super) fn set(&mut self, slot: u32, role: Role) {
        let index = slot as usize;
        if role != Role::Vacant && self.roles.len() <= index {
            self.roles.resize(index.saturating_add(1), Role::Vacant);
        }
        let Some(entry) = self.roles.get_mut(index) else {
            return;
        };
        let old = std::mem::replace(entry, role);
        for (role, add) in [(old, false), (role, true)] {
            let (stage, fleet) = match role {
                Role::Vacant | Role::Exposed { .. } => (0, 0),
                Role::StageBaseline { .. } => (1, 1),
                Role::FleetBaseline { .. } => (0, 1),
            };
            if add {
                self.stage_unexposed = self.stage_unexposed.saturating_add(stage);
                self.fleet_unexposed = self.fleet_unexposed.saturating_add(fleet);
            } else {
                self.stage_unexposed = self.stage_unexposed.saturating_sub(stage);
                self.fleet_unexposed = self.fleet_unexposed.saturating_sub(fleet);
            }
        }
    }

    /// Whether a node in `role` belongs to the current stage's baseline: the stage selector's
    /// unexposed nodes, or every unexposed node when the selector has none.
    pub(super) fn in_baseline(&self, role: Role) -> bool {
        match role {
            Role::StageBaseline { .. } => true,
            Role::FleetBaseline { .. } => self.stage_unexposed == 0,
            Role::Vacant | Role::Exposed { .. } => false,
        }
    }

    /// Nodes in the current stage's baseline; `None` when every node is exposed.
    pub(super) fn baseline_nodes(&self) -> Option<u64> {
        [self.stage_unexposed, self.fleet_unexposed]
            .into_iter()
            .find(|count| *count > 0)
    }
}

/// A node's role for a rollout, from the rollout's state and the node's labels.
pub(super) fn role_of(rollout: &Rollout, node: &NodeId, state: &NodeState) -> Role {
    let labels = &state.labels;
    if let Some(position) = rollout.exposed.position_of(node) {
        Role::Exposed { position }
    } else if state.out_of_service() {
        // Down and unexposed: in no group, so a baseline is not counted on nodes that send
        // nothing.
        Role::Vacant
    } else {
        let upcoming = rollout.selects_through(rollout.upcoming_stage(), node, labels);
        if rollout
            .current_stage()
            .is_some_and(|stage| stage.selector.matches(labels))
        {
            Role::StageBaseline { upcoming }
        } else {
            Role::FleetBaseline { upcoming }
        }
    }
}

// ----- derived indexes ----------------------------------------------------------------------
impl Engine {
    /// Rebuilds every derived index from the state (after deserialization).
    pub(super) fn rebuild_index(&mut self) {
        let mut ids: Vec<&NodeId> = self.nodes.keys().collect();
        ids.sort();
        let mut index = FleetIndex {
            built: true,
            ..FleetIndex::default()
        };
        for id in ids {
            index.insert(id);
        }
        self.index = Derived(index);
        for id in self.active_rollouts() {
            self.rebuild_roles(id);
        }
    }

    /// Running and paused rollouts of every unit.
    pub(super) fn active_rollouts(&self) -> Vec<RolloutId> {
        self.units
            .values()
            .flat_map(|unit| unit.active.iter().copied())
            .collect()
    }

    /// Recomputes the rollout's role of every node: O(fleet), on stage entry only.
    pub(super) fn rebuild_roles(&mut self, id: RolloutId) {
        let Self {
            nodes,
            rollouts,
            index,
            ..
        } = self;
        let Some(rollout) = rollouts.get_mut(&id) else {
            return;
        };
        let mut roles = RoleIndex {
            roles: vec![Role::Vacant; index.0.slots_used as usize],
            ..RoleIndex::default()
        };
        for (node, state) in nodes.iter() {
            if let Some(slot) = index.0.slot(node) {
                roles.set(slot, role_of(rollout, node, state));
            }
        }
        rollout.roles = Derived(roles);
    }

    /// Recomputes one node's role for one active rollout.
    pub(super) fn refresh_role(&mut self, id: RolloutId, node: &NodeId) {
        let Self {
            nodes,
            rollouts,
            index,
            ..
        } = self;
        let (Some(rollout), Some(state), Some(slot)) =
            (rollouts.get_mut(&id), nodes.get(node), index.0.slot(node))
        else {
            return;
        };
        let role = role_of(rollout, node, state);
        rollout.roles.0.set(slot, role);
    }

    /// Checks every derived index against one rebuilt from the state; `Err` says what differs.
    /// For tests and audits: O(fleet × running rollouts).
    pub fn check_derived_indexes(&self) -> Result<(), String> {
        let mut fresh = self.clone();
        fresh.rebuild_index();
        for id in self.active_rollouts() {
            let (Some(kept), Some(rebuilt)) = (self.rollouts.get(&id), fresh.rollouts.get(&id))
            else {
                return Err(format!("active rollout {id} is missing"));
            };
            let (kept, rebuilt) = (&kept.roles.0, &rebuilt.roles.0);
            if (kept.stage_unexposed, kept.fleet_unexposed)
                != (rebuilt.stage_unexposed, rebuilt.fleet_unexposed)
            {
                return Err(format!(
                    "rollout {id}: kept baseline counts (stage {}, fleet {}), rebuilt (stage {}, fleet {})",
                    kept.stage_unexposed,
                    kept.fleet_unexposed,
                    rebuilt.stage_unexposed,
                    rebuilt.fleet_unexposed
                ));
            }
            for (node, _) in self.nodes.iter() {
                let kept_role = self.index.0.slot(node).map(|slot| kept.role(slot));
                let rebuilt_role = fresh.index.0.slot(node).map(|slot| rebuilt.role(slot));
                if kept_role != rebuilt_role {
                    return Err(format!(
                        "rollout {id}, node {node}: kept role {kept_role:?}, rebuilt {rebuilt_role:?}"
                    ));
                }
            }
        }
        for node in self.nodes.keys() {
            let short = ShortId::of(node);
            let kept = self.index.0.slot(node).map(|slot| {
                self.index
                    .0
                    .short_by_slot
                    .get(slot as usize)
                    .copied()
                    .flatten()
            });
            if short.is_some() && kept != Some(short) {
                return Err(format!("node {node}: its slot does not hold its id"));
            }
        }
        if self.index.0.len() != self.nodes.len() {
            return Err(format!(
                "{} node slots for {} nodes",
                self.index.0.len(),
                self.nodes.len()
            ));
        }
        Ok(())
    }
}
