import Foundation
import WALCore

#if canImport(Glibc)
import Glibc
#endif

/// A standby the receiver has served, remembered across restarts: by slot name when it streams with
/// `primary_slot_name`, by application_name otherwise. Its replayed position holds WAL back from pruning,
/// also while it is down for maintenance.
public struct StandbyRecord: Codable, Sendable, Equatable {
    public var name: String
    public var viaSlot: Bool
    public var replayedLSN: String
    public var updatedAt: Date

    public init(name: String, viaSlot: Bool, replayedLSN: LSN, updatedAt: Date) {
        self.name = name
        self.viaSlot = viaSlot
        self.replayedLSN = replayedLSN.description
        self.updatedAt = updatedAt
    }

    public var replayed: LSN { LSN(replayedLSN) ?? .invalid }
}

public enum StandbyRegistry {
    static func directory(_ systemDirectory: String) -> String { systemDirectory + "/standbys" }

    static func fileName(_ name: String, viaSlot: Bool) -> String {
        let safe = name.map { $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" ? $0 : "_" }
        return (viaSlot ? "slot-" : "app-") + String(safe) + ".json"
    }

    public static func save(_ record: StandbyRecord, systemDirectory: String) throws {
        let dir = directory(systemDirectory)
        try FileIO.makeDirectory(dir)
        let data = try JSONEncoder.walship.encode(record)
        try Array(data).withUnsafeBytes {
            try FileIO.writeAtomically($0, to: dir + "/" + fileName(record.name, viaSlot: record.viaSlot), directory: dir)
        }
    }

    public static func list(systemDirectory: String) throws -> [StandbyRecord] {
        let dir = directory(systemDirectory)
        guard FileIO.isDirectory(dir) else { return [] }
        return try FileIO.listDirectory(dir).filter { $0.hasSuffix(".json") }.map { name in
            let bytes = try FileIO.readWholeFile(dir + "/" + name, maxBytes: 1 << 16)
            do { return try JSONDecoder.walship.decode(StandbyRecord.self, from: Data(bytes)) } catch {
                throw SpoolError(.corrupt, "\(dir)/\(name) is damaged: \(error)")
            }
        }
    }

    public static func forget(name: String, viaSlot: Bool, systemDirectory: String) throws {
        try FileIO.remove(directory(systemDirectory) + "/" + fileName(name, viaSlot: viaSlot))
    }
}

/// What the archive (`walship receive --archive`) has confirmed in the object store, outside which retention keeps
/// everything (docs/archive.md): the spool may drop what is archived, never what is not, including files the
/// archiver has not seen yet (they complete while it uploads something large).
public enum ArchiveHold: Sendable, Equatable {
    /// The archiver has not yet read what the store holds: nothing may be pruned.
    case everything
    /// Only these completed segments (`NAME.lz4`) and base backups (ids) are confirmed in the store.
    case allBut(archivedSegments: Set<String>, archivedBackups: Set<String>)
}

/// What may be removed from a system's spool, and why. The rule: keep the newest `retainBackups` complete
/// backups and, with a recovery window, every complete backup needed to restore to any time in it (those stored
/// within it and the newest stored before it began); keep all WAL from the oldest kept backup's start onward;
/// never remove WAL a known standby has not replayed; with no complete backup, remove nothing.
public struct RetentionPlan: Sendable, Equatable {
    public var removeBackups: [String]
    public var removeSegments: [SegmentName]
    /// WAL from here on is kept; nil when nothing may be pruned.
    public var keepFrom: LSN?
    public var reasons: [String]

    /// A standby holding back more than this is reported.
    public static let holdBackWarningBytes: UInt64 = 1 << 30

    /// `recoveryWindow`: seconds back from `now` that must stay restorable (`--retain-days`); nil for none.
    public static func compute(
        backups: [BackupInfo], segments: [SegmentName], standbys: [StandbyRecord], retainBackups: Int,
        segmentSize: WALSegmentSize, recoveryWindow: Double? = nil, archiveHold: ArchiveHold? = nil, now: Date = Date()
    ) -> RetentionPlan {
        if archiveHold == .everything {
            return RetentionPlan(
                removeBackups: [], removeSegments: [], keepFrom: nil,
                reasons: ["the archive has not yet read what the object store holds: nothing is pruned"])
        }
        let complete = backups.filter { $0.status == .complete }.sorted { $0.id < $1.id }
        guard retainBackups > 0, var oldestKept = complete.suffix(retainBackups).first else {
            return RetentionPlan(
                removeBackups: [], removeSegments: [], keepFrom: nil,
                reasons: ["no complete base backup yet: nothing is pruned"])
        }
        var reasons = ["keeping the newest \(retainBackups) complete backup(s)"]
        if let recoveryWindow {
            // A restore to a time T starts from the newest backup stored by T (recovery cannot stop before a
            // backup's end), so the window's start needs the newest backup stored by then, and all after it.
            let windowStart = now.addingTimeInterval(-recoveryWindow)
            let base = complete.last { $0.createdAt <= windowStart } ?? complete[0]
            if base.id < oldestKept.id { oldestKept = base }
            reasons.append(
                complete.contains { $0.createdAt <= windowStart }
                    ? "recovery window of \(formatWindow(recoveryWindow)) (from \(windowStart.formatted(.iso8601))): \(base.id), stored \(base.createdAt.formatted(.iso8601)), is the newest backup stored before it began"
                    : "recovery window of \(formatWindow(recoveryWindow)) (from \(windowStart.formatted(.iso8601))): no backup is that old, so every complete backup is kept"
            )
        }
        guard let backupStart = LSN(oldestKept.startLSN) else {
            return RetentionPlan(
                removeBackups: [], removeSegments: [], keepFrom: nil,
                reasons: ["backup \(oldestKept.id) has an unreadable start LSN \(oldestKept.startLSN): nothing is pruned"])
        }
        var keepFrom = segmentSize.segmentStart(of: backupStart)
        reasons.append("the oldest kept backup, \(oldestKept.id), starts at \(backupStart)")
        for standby in standbys where standby.replayed.isValid && segmentSize.segmentStart(of: standby.replayed) < keepFrom {
            let held = keepFrom.bytesAfter(segmentSize.segmentStart(of: standby.replayed))
            if held > holdBackWarningBytes {
                reasons.append(
                    "WARNING: standby \(standby.name) (last seen \(standby.updatedAt)) holds back \(held >> 20) MiB of WAL; if it is gone for good, walship standby forget \(standby.name)"
                )
            }
            keepFrom = segmentSize.segmentStart(of: standby.replayed)
            reasons.append("standby \(standby.name) has replayed only to \(standby.replayedLSN); its WAL is kept")
        }
        var removeBackups = backups.filter { $0.id < oldestKept.id }.map(\.id)
        if case .allBut(let archivedSegments, let archivedBackups) = archiveHold {
            let oldestHeld = segments.filter { !archivedSegments.contains("\($0).lz4") }.min()
            if let oldestHeld, oldestHeld.startLSN < keepFrom {
                keepFrom = oldestHeld.startLSN
                reasons.append("segment \(oldestHeld) is not in the object store yet: WAL from it on is kept")
            }
            let unarchived = removeBackups.filter { !archivedBackups.contains($0) }
            if !unarchived.isEmpty {
                removeBackups.removeAll { !archivedBackups.contains($0) }
                reasons.append("backup(s) \(unarchived.joined(separator: ", ")) not in the object store yet: kept")
            }
        }
        let removeSegments = segments.filter { $0.endLSN <= keepFrom }.sorted()
        return RetentionPlan(removeBackups: removeBackups, removeSegments: removeSegments, keepFrom: keepFrom, reasons: reasons)
    }
}

/// `7d`, `36h`: the window as `--retain-days` may give it.
func formatWindow(_ seconds: Double) -> String {
    seconds.truncatingRemainder(dividingBy: 86_400) == 0 ? "\(Int(seconds / 86_400)) days" : "\(Int(seconds / 3600)) hours"
}

/// The spool's lock held by `walship prune` while it removes files, so it never runs beside a live receiver (which
/// prunes by itself, and could be writing a backup or reading WAL a standby needs) and no receiver starts meanwhile.
public final class SpoolMaintenanceLock: Sendable {
    private let fd: Int32
    private let io: FileIO

    public init(root: String, fileSystem: any FileSystem = PosixFileSystem()) throws {
        io = FileIO(fileSystem)
        guard io.isDirectory(root) else {
            throw SpoolError(.io, "spool directory \"\(root)\" does not exist (hint: give the --spool of walship receive)")
        }
        let path = Spool.lockPath(root)
        let created = !io.exists(path)
        do {
            fd = try io.fs.lockExclusively(path)
            // Run as root on a spool no receiver has used yet: the lock file must stay the receiver's to open.
            if created, fileSystem is PosixFileSystem {
                var owner = stat()
                if stat(root, &owner) == 0 { _ = chown(path, owner.st_uid, owner.st_gid) }
            }
        } catch {
            guard error.code == EWOULDBLOCK else { throw SpoolError.errno("lock", path, error.code) }
            throw SpoolError(
                .locked,
                "spool \"\(root)\" is in use by a running walship receive, which prunes it by itself every minute with its own --retain-backups and --retain-days (hint: change those and restart it, or stop it to prune by hand; --dry-run reads without the lock)"
            )
        }
    }

    deinit { io.close(fd) }
}

public enum Pruner {
    /// Plans (and unless `dryRun`, applies) retention for one system. Only completed segments and whole backups
    /// are removed; the in-progress segment and history files never are.
    public static func prune(
        systemDirectory: String, segmentSize: WALSegmentSize, retainBackups: Int, recoveryWindow: Double? = nil,
        archiveHold: ArchiveHold? = nil, dryRun: Bool, now: Date = Date()
    ) throws -> RetentionPlan {
        let walDirectory = systemDirectory + "/wal"
        let segments = try FileIO.listDirectory(walDirectory).compactMap { name -> SegmentName? in
            name.hasSuffix(".lz4") ? SegmentName(name.dropLast(4), segmentSize: segmentSize) : nil
        }
        let plan = RetentionPlan.compute(
            backups: try BackupCatalog.list(systemDirectory: systemDirectory), segments: segments,
            standbys: try StandbyRegistry.list(systemDirectory: systemDirectory),
            retainBackups: retainBackups, segmentSize: segmentSize, recoveryWindow: recoveryWindow, archiveHold: archiveHold,
            now: now)
        guard !dryRun else { return plan }
        for id in plan.removeBackups {
            try FileIO.removeDirectory(systemDirectory + "/base/" + id)
        }
        for segment in plan.removeSegments { try FileIO.remove(walDirectory + "/\(segment).lz4") }
        if !plan.removeSegments.isEmpty { try FileIO.syncDirectory(walDirectory) }
        if !plan.removeBackups.isEmpty { try FileIO.syncDirectory(systemDirectory + "/base") }
        return plan
    }

    /// Segment size recorded for a system directory.
    public static func segmentSize(systemDirectory: String) throws -> WALSegmentSize {
        try SystemConfiguration.read(directory: systemDirectory).segmentSize
    }
}
