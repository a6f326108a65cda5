import Foundation
import WALCore

/// `--archive-retain-days` and `--archive-retain-backups`: how long the bucket keeps base backups, and with them
/// the WAL they need.
public struct ArchiveRetentionPolicy: Sendable, Equatable {
    /// Keep what a recovery to any time in the last `days` days needs: every backup taken since, and the newest one
    /// taken before (a recovery to the window's first moment starts from it).
    public var days: Int?
    /// Keep the newest `backups` complete backups.
    public var backups: Int?

    public init(days: Int? = nil, backups: Int? = nil) {
        self.days = days
        self.backups = backups
    }

    public var isEnabled: Bool { days != nil || backups != nil }
}

/// A complete base backup in the archive: its record (`backup.json`) and its objects.
public struct ArchivedBackup: Sendable, Equatable {
    public var id: String
    public var start: LSN
    public var stop: LSN
    public var createdAt: Date
    /// Its objects' paths below the system's prefix (`base/<id>/…`), its record among them.
    public var paths: [String]

    public init(id: String, start: LSN, stop: LSN, createdAt: Date, paths: [String]) {
        self.id = id
        self.start = start
        self.stop = stop
        self.createdAt = createdAt
        self.paths = paths
    }
}

/// What retention removes from one system's part of the bucket, decided over its listing alone (pure). A backup
/// is kept when either rule keeps it (and the newest always is); the WAL from the oldest kept backup's start onward
/// stays, on every timeline, and every history file stays. Nothing is removed while no complete backup is there:
/// the WAL would then be all there is.
public struct ArchiveRetentionPlan: Sendable, Equatable {
    public var keptBackups: [String]
    /// Oldest first.
    public var removedBackups: [ArchivedBackup]
    /// The segments older than every kept backup's start (`wal/NAME.lz4`), oldest first.
    public var walDeletions: [String]
    /// Why nothing is removed, when that is the rule's doing.
    public var nothingBecause: String?

    /// Paths below the system's prefix in the order to delete them: each removed backup's record first (it then
    /// no longer counts as complete, should the rest fail), then its other objects, then the old WAL.
    public var deletions: [String] {
        var paths: [String] = []
        for backup in removedBackups {
            let record = "base/\(backup.id)/backup.json"
            if backup.paths.contains(record) { paths.append(record) }
            paths += backup.paths.filter { $0 != record }.sorted()
        }
        return paths + walDeletions
    }

    /// The WAL deletions once the store refused to delete the records of `held` backups (object lock, a bucket
    /// policy): those backups still count as complete, so the WAL from the oldest one's start stays too.
    public func walDeletions(sparing held: [ArchivedBackup], segmentSize: WALSegmentSize) -> [String] {
        let heldStarts: [UInt64] = held.map { segmentSize.segmentNumber(of: $0.start) }
        guard let firstHeld = heldStarts.min() else { return walDeletions }
        return walDeletions.filter { (path: String) -> Bool in
            let name = String(path.dropFirst("wal/".count).prefix(24))
            guard let segment = SegmentName(name, segmentSize: segmentSize) else { return false }
            return segment.number < firstHeld
        }
    }

    /// The S3 error codes of a delete the store refuses (an object under lock or legal hold, a bucket policy that
    /// forbids deleting): reported and left, never a failure of the archiver.
    public static func isRefusal(code: String?) -> Bool {
        ["AccessDenied", "ObjectLocked", "InvalidRequest", "MethodNotAllowed"].contains(code ?? "")
    }

    public static func make(
        policy: ArchiveRetentionPolicy, backups: [ArchivedBackup], walFiles: [String], segmentSize: WALSegmentSize,
        now: Date
    ) -> ArchiveRetentionPlan {
        guard policy.isEnabled else {
            return ArchiveRetentionPlan(
                keptBackups: backups.map(\.id), removedBackups: [], walDeletions: [], nothingBecause: "no retention set")
        }
        let newestFirst: [ArchivedBackup] = backups.sorted { (a: ArchivedBackup, b: ArchivedBackup) -> Bool in
            a.createdAt != b.createdAt ? a.createdAt > b.createdAt : a.id > b.id
        }
        guard let newest = newestFirst.first else {
            return ArchiveRetentionPlan(
                keptBackups: [], removedBackups: [], walDeletions: [],
                nothingBecause: "no complete backup in the archive: its WAL is all there is")
        }
        var kept: Set<String> = [newest.id]
        if let count = policy.backups { kept.formUnion(newestFirst.prefix(max(count, 1)).map(\.id)) }
        if let days = policy.days {
            let windowStart = now.addingTimeInterval(-Double(days) * 86_400)
            kept.formUnion(newestFirst.filter { $0.createdAt >= windowStart }.map(\.id))
            // The newest backup from before the window: a recovery to the window's start replays from it.
            if let before = newestFirst.first(where: { $0.createdAt < windowStart }) { kept.insert(before.id) }
        }
        let keptBackups: [ArchivedBackup] = newestFirst.filter { kept.contains($0.id) }
        let removed: [ArchivedBackup] = newestFirst.filter { !kept.contains($0.id) }.reversed()
        // The WAL every kept backup needs starts at the segment of its start: nothing from the oldest such segment on
        // goes, on any timeline (LSNs grow across timeline switches).
        let starts: [UInt64] = keptBackups.map { segmentSize.segmentNumber(of: $0.start) }
        let firstNeeded: UInt64 = starts.min() ?? 0
        var oldWAL: [SegmentName: String] = [:]
        for file in walFiles where file.hasSuffix(".lz4") && file.count == 28 {
            guard let name = SegmentName(String(file.prefix(24)), segmentSize: segmentSize) else { continue }
            if name.number < firstNeeded { oldWAL[name] = file }
        }
        let walDeletions: [String] = oldWAL.keys.sorted().map { "wal/" + (oldWAL[$0] ?? "") }
        let nothing: String? =
            removed.isEmpty && walDeletions.isEmpty ? "everything in the archive is within the retention" : nil
        return ArchiveRetentionPlan(
            keptBackups: keptBackups.map(\.id), removedBackups: removed, walDeletions: walDeletions, nothingBecause: nothing)
    }
}
