import Foundation
import Spool
import StatusModel

/// A file of the spool the archive copies: a completed segment (`wal/NAME.lz4`), a timeline history file
/// (`wal/NNNNNNNN.history`), or a file of a complete base backup (`base/<id>/base.tar.lz4`, `backup_manifest`,
/// `backup.json`).
public struct ArchiveObject: Hashable, Sendable {
    public var system: UInt64
    /// The file's path below the system's spool directory, which is also its key below `PREFIX/<system id>/`.
    public var path: String
    public var size: UInt64
    /// When the spool completed it (the file's modification time): the archive lag's age counts from here.
    public var completedAt: Date

    public init(system: UInt64, path: String, size: UInt64, completedAt: Date) {
        self.system = system
        self.path = path
        self.size = size
        self.completedAt = completedAt
    }

    public var isHistoryFile: Bool { path.hasSuffix(".history") }

    /// For a backup's `backup.json`: the backup's directory (`base/<id>/`), whose other files must be archived first.
    var recordOfBackup: String? {
        guard path.hasPrefix("base/"), path.hasSuffix("/backup.json") else { return nil }
        return String(path.dropLast("backup.json".count))
    }

    var key: ArchiveKey { ArchiveKey(system: system, path: path) }

    /// History files first (a restore that follows a timeline switch needs the history before the new timeline's
    /// WAL), then segments by name (timeline, then position), then backups, each backup's record last.
    var rank: Int {
        if isHistoryFile { return 0 }
        if path.hasPrefix("wal/") { return 1 }
        return recordOfBackup == nil ? 2 : 3
    }

    static func uploadOrder(_ a: ArchiveObject, _ b: ArchiveObject) -> Bool {
        (a.system, a.rank, a.path) < (b.system, b.rank, b.path)
    }
}

struct ArchiveKey: Hashable, Sendable {
    var system: UInt64
    var path: String
}

/// The archive's rules, without I/O: which objects to upload next, when to retry after a failure, what counts as
/// archived, and the lag the status reports. The driver (`Archiver`) reports what the spool holds and how each step
/// went, and carries out the actions; it decides nothing.
///
/// - An object counts as archived only when the driver reports it confirmed: read back from the store with the
///   local size and checksum (after an upload, or in the listing of what the store held at start).
/// - Before uploading anything of a system the driver reconciles it once: what the store already holds is not sent
///   again (a restarted receiver resumes where it was).
/// - A failure (of any step) backs off the whole store: no attempt until `retryAt`, the wait doubling from
///   `initialBackoff` to `maximumBackoff`; any success ends the streak. `failingAfter` failures in a row make the
///   archive failing (the `archive_failing` alert).
/// - An object that leaves the spool before it was archived (pruned by retention) is dropped, and reported.
/// - A base backup's `backup.json` goes up only once every other file of that backup is archived: in the store, a
///   backup whose record is there is whole.
public struct ArchiveStateMachine: Sendable {
    public struct Policy: Sendable, Equatable {
        public var maximumInFlight = 1
        public var initialBackoff: Double = 1
        public var maximumBackoff: Double = 30
        public var failingAfter = 3

        public init(maximumInFlight: Int = 1, initialBackoff: Double = 1, maximumBackoff: Double = 30, failingAfter: Int = 3) {
            self.maximumInFlight = maximumInFlight
            self.initialBackoff = initialBackoff
            self.maximumBackoff = maximumBackoff
            self.failingAfter = failingAfter
        }
    }

    public enum Action: Sendable, Equatable {
        /// List what the store holds of this system and report it with `reconciled` (or `reconcileFailed`).
        case reconcile(system: UInt64)
        /// Upload the object, read it back, and report `uploaded` or `uploadFailed`.
        case upload(ArchiveObject)
    }

    /// An object the spool no longer holds although the store never confirmed it.
    public struct Vanished: Sendable, Equatable {
        public var object: ArchiveObject
    }

    enum Reconciliation: Equatable {
        case needed
        case running
        case done
    }

    public let policy: Policy
    private var pending: [ArchiveKey: ArchiveObject] = [:]
    private var inFlight: [ArchiveKey: ArchiveObject] = [:]
    private var archived: Set<ArchiveKey> = []
    private var reconciliation: [UInt64: Reconciliation] = [:]
    private var archivedCount: [UInt64: Int] = [:]
    private var lastArchived: [UInt64: (path: String, at: Date)] = [:]
    private var lastError: (message: String, at: Date)?
    private var failingSince: Date?
    private var consecutiveFailures = 0
    private var retryAt: Date?

    public init(policy: Policy = Policy()) { self.policy = policy }

    // MARK: Events

    /// What one system's `wal/` directory holds now (completed segments and history files). Returns what vanished
    /// from it unarchived.
    public mutating func spoolScanned(system: UInt64, objects: [ArchiveObject]) -> [Vanished] {
        if reconciliation[system] == nil { reconciliation[system] = .needed }
        let present = Set(objects.map(\.key))
        var vanished: [Vanished] = []
        for (key, object) in pending where key.system == system && !present.contains(key) {
            pending[key] = nil
            vanished.append(Vanished(object: object))
        }
        // Archived objects pruned from the spool need no memory; their count stays.
        archived = archived.filter { $0.system != system || present.contains($0) }
        for object in objects where !archived.contains(object.key) && inFlight[object.key] == nil {
            pending[object.key] = object
        }
        return vanished.sorted { ArchiveObject.uploadOrder($0.object, $1.object) }
    }

    /// The store already holds these objects (paths) of `system`, confirmed by size and checksum.
    public mutating func reconciled(system: UInt64, confirmed paths: Set<String>, now: Date) {
        reconciliation[system] = .done
        for path in paths {
            let key = ArchiveKey(system: system, path: path)
            guard pending.removeValue(forKey: key) != nil else { continue }
            archived.insert(key)
            archivedCount[system, default: 0] += 1
        }
        succeeded(now: now)
    }

    public mutating func reconcileFailed(system: UInt64, error: String, now: Date) {
        reconciliation[system] = .needed
        failed(error, now: now)
    }

    /// The store confirmed the object (read back with the spool's size and checksum).
    public mutating func uploaded(_ object: ArchiveObject, now: Date) {
        guard inFlight.removeValue(forKey: object.key) != nil else { return }
        archived.insert(object.key)
        archivedCount[object.system, default: 0] += 1
        lastArchived[object.system] = (object.path, now)
        succeeded(now: now)
    }

    /// The upload or its read-back failed: the object waits for the next attempt.
    public mutating func uploadFailed(_ object: ArchiveObject, error: String, now: Date) {
        guard let current = inFlight.removeValue(forKey: object.key) else { return }
        pending[object.key] = current
        failed(error, now: now)
    }

    /// The object left the spool while it was being uploaded (retention pruned it): not the store's failure.
    public mutating func uploadAbandoned(_ object: ArchiveObject) {
        inFlight[object.key] = nil
    }

    private mutating func succeeded(now: Date) {
        consecutiveFailures = 0
        failingSince = nil
        retryAt = nil
    }

    private mutating func failed(_ error: String, now: Date) {
        consecutiveFailures += 1
        if failingSince == nil { failingSince = now }
        lastError = (error, now)
        retryAt = now.addingTimeInterval(backoff(afterFailures: consecutiveFailures))
    }

    /// 1 s, 2 s, 4 s, ... up to the maximum.
    public func backoff(afterFailures failures: Int) -> Double {
        guard failures > 0 else { return 0 }
        let doubled = policy.initialBackoff * pow(2, Double(min(failures - 1, 30)))
        return min(doubled, policy.maximumBackoff)
    }

    // MARK: Decisions

    /// What to start now: reconciliations first, then uploads in order, within `maximumInFlight`; nothing while a
    /// backoff runs. Marks what it returns as started.
    public mutating func next(now: Date) -> [Action] {
        if let retryAt, now < retryAt { return [] }
        var actions: [Action] = []
        for (system, state) in reconciliation.sorted(by: { $0.key < $1.key }) where state == .needed {
            if runningCount + actions.count >= policy.maximumInFlight { return actions }
            reconciliation[system] = .running
            actions.append(.reconcile(system: system))
        }
        let ready = pending.values.filter { reconciliation[$0.system] == .done }.sorted(by: ArchiveObject.uploadOrder)
        for object in ready {
            if runningCount >= policy.maximumInFlight { break }
            if let backup = object.recordOfBackup, waitsFor(backup: backup, system: object.system) { continue }
            pending[object.key] = nil
            inFlight[object.key] = object
            actions.append(.upload(object))
        }
        return actions
    }

    /// Whether another file of this backup is still pending or in flight.
    private func waitsFor(backup directory: String, system: UInt64) -> Bool {
        let unarchived = pending.keys.lazy.map { ($0, false) } + inFlight.keys.lazy.map { ($0, true) }
        return unarchived.contains { key, _ in
            key.system == system && key.path.hasPrefix(directory) && !key.path.hasSuffix("/backup.json")
        }
    }

    private var runningCount: Int { inFlight.count + reconciliation.values.filter { $0 == .running }.count }

    /// When `next` may have something again after a failure; nil when it need not wait.
    public var nextAttemptAt: Date? { retryAt }

    /// Whether anything waits for the store (pending or in flight).
    public var hasWork: Bool { !pending.isEmpty || !inFlight.isEmpty }

    // MARK: Status

    public func status(system: UInt64, destination: String, now: Date) -> StatusDocument.ArchiveStatus {
        let waiting = pending.values.filter { $0.system == system } + inFlight.values.filter { $0.system == system }
        let oldest = waiting.map(\.completedAt).min()
        return StatusDocument.ArchiveStatus(
            destination: destination, lagSegments: waiting.count, lagBytes: waiting.reduce(0) { $0 + $1.size },
            lagSeconds: oldest.map { max(0, now.timeIntervalSince($0)) }, archivedObjects: archivedCount[system] ?? 0,
            lastArchived: lastArchived[system]?.path, lastArchivedAt: lastArchived[system]?.at,
            lastError: lastError?.message, lastErrorAt: lastError?.at, failingSince: failingSince,
            consecutiveFailures: consecutiveFailures, failing: consecutiveFailures >= policy.failingAfter,
            retryAt: retryAt)
    }

    /// The paths of `system` not confirmed in the store (pending or in flight); nil until the store's listing was
    /// read (then nothing is known to be archived).
    public func unarchived(system: UInt64) -> Set<String>? {
        guard reconciliation[system] == .done else { return nil }
        return Set((pending.keys.lazy.map { $0 } + inFlight.keys.lazy.map { $0 }).filter { $0.system == system }.map(\.path))
    }

    /// The paths of `system` the store has confirmed and the spool still holds; nil until the store's listing was
    /// read. A file the machine has not seen yet is not among them.
    public func archived(system: UInt64) -> Set<String>? {
        guard reconciliation[system] == .done else { return nil }
        return Set(archived.filter { $0.system == system }.map(\.path))
    }

    /// What the spool's retention must keep of `system`: everything until the store's listing was read, then all but
    /// the segments and backups confirmed there. A file the machine has not seen yet (completed while a large upload
    /// ran) is kept too: it may be older than the newest backup, and retention would otherwise drop it unarchived.
    public func retentionHold(system: UInt64) -> ArchiveHold {
        guard let paths = archived(system: system) else { return .everything }
        var segments: Set<String> = []
        var backups: Set<String> = []
        for path in paths {
            let parts = path.split(separator: "/")
            if parts.count == 2, parts[0] == "wal" { segments.insert(String(parts[1])) }
            // A backup counts once its record, which goes up last, is confirmed.
            if parts.count == 3, parts[0] == "base", parts[2] == "backup.json" { backups.insert(String(parts[1])) }
        }
        return .allBut(archivedSegments: segments, archivedBackups: backups)
    }

    /// The systems the machine has seen.
    public var systems: [UInt64] { reconciliation.keys.sorted() }
}
