import Foundation
import PGReplication
import ShipProtocol
import WALCore

/// Follows how the primary treats this sender and decides what the receiver is told. Pure: observations in,
/// mode changes out. A change is kept until a link takes it; a new link is first told the changes it missed,
/// then the mode now, so the receiver's history is whole even across a link that was down.
struct ReplicationModeTracker: Sendable {
    /// One reading of the primary (`pg_stat_replication` and settings), taken while the sender streams.
    struct Observation: Sendable, Equatable {
        /// `sync_state` of the sender's row; nil when NULL or when there is no row.
        var syncState: String?
        var synchronousCommit: String?
        var synchronousStandbyNames: String?
        var degraded: Bool
        var exposureBytes: UInt64
        var lsn: LSN
        var at: PostgresTimestamp
    }

    /// Changes kept for a link beyond this many are dropped oldest first (the link has been down a long time and
    /// the mode flapped); the receiver is told the mode now in any case.
    static let maxUnsent = 64

    let synchronousRequested: Bool
    let applicationName: String
    private(set) var current: ModeChange?
    /// When the current mode began (the first observation of it), in the primary's clock.
    private(set) var since: PostgresTimestamp?
    /// Since when `--sync` has been asked for and not honoured; nil while it is (or is not asked for).
    private(set) var notHonouredSince: PostgresTimestamp?
    private(set) var unsent: [ModeChange] = []

    init(synchronousRequested: Bool, applicationName: String) {
        self.synchronousRequested = synchronousRequested
        self.applicationName = applicationName
    }

    /// Takes one observation; returns the change it makes, if any (kept for the link too).
    mutating func observed(_ observation: Observation) -> ModeChange? {
        let mode = ReplicationMode.observed(
            syncState: observation.syncState, synchronousCommit: observation.synchronousCommit,
            degraded: observation.degraded)
        let honoured = !synchronousRequested || mode == .sync || mode == .degraded
        if honoured {
            notHonouredSince = nil
        } else if notHonouredSince == nil {
            notHonouredSince = observation.at
        }
        if let current, current.mode == mode, current.syncState == (observation.syncState ?? ""),
            current.synchronousCommit == (observation.synchronousCommit ?? "")
        {
            // Under degrade-after the exposure is the figure that matters; its growth is kept, not its every step.
            guard mode == .degraded, observation.exposureBytes > current.exposureBytes else { return nil }
        }
        let change = ModeChange(
            mode: mode, lsn: observation.lsn, observedAt: observation.at, syncState: observation.syncState ?? "",
            synchronousCommit: observation.synchronousCommit ?? "", exposureBytes: observation.exposureBytes,
            detail: explanation(mode, observation))
        if current?.mode != mode { since = observation.at }
        current = change
        unsent.append(change)
        if unsent.count > Self.maxUnsent { unsent.removeFirst(unsent.count - Self.maxUnsent) }
        return change
    }

    /// A new link is up: what to send it first, oldest first. The current mode comes last even when it was sent
    /// on an earlier link, so every link's history begins with where things stand.
    mutating func linkStarted() -> [ModeChange] {
        var out = unsent
        unsent = []
        if let current, out.last != current { out.append(current) }
        return out
    }

    /// Changes made since the link last took them.
    mutating func takeUnsent() -> [ModeChange] {
        defer { unsent = [] }
        return unsent
    }

    private func explanation(_ mode: ReplicationMode, _ o: Observation) -> String {
        let names = o.synchronousStandbyNames.map { "synchronous_standby_names = '\($0)'" } ?? ""
        switch mode {
        case .sync:
            return
                "the primary's commits wait for the DR site (sync_state sync, synchronous_commit \(o.synchronousCommit ?? "?"))"
        case .quorum:
            return "the DR site is one of a quorum (\(names)): a commit may return before the DR site has it"
        case .potential:
            return "the DR site is a potential synchronous standby (\(names)): commits do not wait for it"
        case .async:
            if o.syncState == "sync" {
                return "synchronous_commit is \(o.synchronousCommit ?? "?") by default: commits do not wait for the DR site"
            }
            if synchronousRequested, let setting = o.synchronousStandbyNames,
                !SynchronousStandbyNames.includes(setting, name: applicationName)
            {
                return "\(names) does not name \(applicationName): commits do not wait for the DR site"
            }
            return "commits do not wait for the DR site (sync_state async)"
        case .degraded:
            return
                "commits are acknowledged from the sender's local buffer; \(o.exposureBytes) bytes of acknowledged WAL are not at the DR site"
        case .unknown:
            return
                "sync_state cannot be read (hint: grant pg_monitor to the sender's role: GRANT pg_monitor TO <role>;)"
        }
    }
}
