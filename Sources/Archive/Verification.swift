import ArchiveCrypto
import Crypto
import Foundation
import LZ4Codec
import Spool
import StatusModel
import WALCore

/// One problem `walship verify` found: how bad, where (a spool file or an object's key), what, and what to do.
public struct VerifyProblem: Sendable, Equatable {
    public var severity: HealthCheck.Code
    public var location: String
    public var problem: String
    public var hint: String

    public init(_ severity: HealthCheck.Code, _ location: String, _ problem: String, hint: String) {
        self.severity = severity
        self.location = location
        self.problem = problem
        self.hint = hint
    }

    /// `CRITICAL s3://…/wal/X.lz4: what (hint: …)`.
    public var line: String { "\(severity.label) \(location): \(problem) (hint: \(hint))" }
}

/// The rules of `walship verify` over one spool or one archive, fed one file or object at a time by a thin driver
/// (which only lists and reads): every object opened (decrypted with the keyring when sealed), its checksums, LZ4
/// frame and WAL page headers checked; at the end the continuity of each timeline, the history file of each switch,
/// the WAL each backup needs, and which key ids are still in use. Pure: bytes in, problems out.
public struct VerifyLedger {
    public let origin: String
    let keyring: Keyring?
    public private(set) var problems: [VerifyProblem] = []
    public private(set) var objectsRead = 0
    public private(set) var bytesRead: UInt64 = 0
    /// Sealed objects per key id (what a rotation still needs).
    public private(set) var keyUse: [String: Int] = [:]
    public private(set) var unencryptedObjects = 0
    private var firstUnencrypted: String?
    /// Sealed objects that could not be checked because no keyring was given.
    private var sealedUnopened = 0
    private var systems: [UInt64: SystemRecord] = [:]

    struct SystemRecord {
        /// The segment size the system's spool names, or that its segments turned out to have.
        var segmentSize: WALSegmentSize?
        /// Every WAL file present (checked or not) by name, with where it is.
        var segmentFiles: [String: String] = [:]
        var historyFiles: [TimeLineID: String] = [:]
        /// The history files that parsed, by the timeline they lead to.
        var histories: [TimeLineID: [TimelineHistoryEntry]] = [:]
        var walLocation = ""
        var backups: [(info: BackupInfo, location: String)] = []
    }

    public init(origin: String, keyring: Keyring?) {
        self.origin = origin
        self.keyring = keyring
    }

    public mutating func report(_ problem: VerifyProblem) { problems.append(problem) }

    /// The spool names its segment size (`system.conf`); an archive's is learned from its segments.
    public mutating func setSegmentSize(_ size: WALSegmentSize, system: UInt64) {
        systems[system, default: .init()].segmentSize = size
    }

    /// Where the system's `wal/` is, for problems about what is missing from it.
    public mutating func setWALLocation(_ location: String, system: UInt64) {
        systems[system, default: .init()].walLocation = location
    }

    // MARK: Objects

    /// Counts a file read and checked elsewhere (a spool's backup archive, streamed).
    public mutating func counted(bytes: UInt64) {
        objectsRead += 1
        bytesRead += bytes
    }

    /// Counts an object as read and returns its bytes as the spool held them: a sealed one opened with the keyring
    /// (bound to `system` and `path`, its name below the system), a plain one as it is. `etag` is the listing's (a
    /// single-part object's is the MD5 of its bytes), `sha256` the object's metadata, when the caller has them. Nil
    /// when the object cannot be opened (the problem is recorded) or is sealed and no keyring was given.
    public mutating func open(
        _ stored: Data, system: UInt64, path: String, location: String, etag: String? = nil, sha256: String? = nil
    ) -> Data? {
        objectsRead += 1
        bytesRead += UInt64(stored.count)
        if systems[system] == nil { systems[system] = SystemRecord() }
        if let problem = Self.storedChecksumProblem(stored, etag: etag, sha256: sha256) {
            report(
                VerifyProblem(
                    .critical, location, problem,
                    hint:
                        "the store returned other bytes than it took: read it again; if it persists, delete the object and restart walship receive while the spool still holds the file (it uploads what the store lacks)"
                ))
            return nil
        }
        guard let keyID = try? SealedObject.keyID(of: stored) else {
            unencryptedObjects += 1
            if firstUnencrypted == nil { firstUnencrypted = location }
            return stored
        }
        keyUse[keyID, default: 0] += 1
        guard let keyring else {
            sealedUnopened += 1
            return nil
        }
        do {
            return try SealedObject.open(stored, binding: .init(system: system, name: path), keyring: keyring)
        } catch {
            switch error {
            case .unknownKey, .wrongKeyOrPlace, .unsupportedVersion:
                report(
                    VerifyProblem(
                        .critical, location, "cannot be decrypted: \(error)",
                        hint:
                            "give --encryption-keyring with the keyring holding key \(keyID) (its escrow copy); without it this object is lost"
                    ))
            case .tampered, .truncated, .notEncrypted:
                report(
                    VerifyProblem(
                        .critical, location, "is damaged: \(error)",
                        hint:
                            "delete the object and restart walship receive while the spool still holds the file (it uploads what the store lacks); otherwise take a new base backup"
                    ))
            }
            return nil
        }
    }

    /// A single-part object's ETag is the MD5 of its bytes; `x-amz-meta-sha256` the SHA-256 of the bytes stored.
    public static func storedChecksumProblem(_ stored: Data, etag: String?, sha256: String?) -> String? {
        if let etag, !etag.isEmpty, !etag.contains("-") {
            let md5 = Insecure.MD5.hash(data: stored).map { String(format: "%02x", $0) }.joined()
            if md5 != etag.lowercased() { return "reads back with MD5 \(md5), not its ETag \(etag)" }
        }
        if let sha256, !sha256.isEmpty {
            let digest = SHA256.hash(data: stored).map { String(format: "%02x", $0) }.joined()
            if digest != sha256.lowercased() { return "reads back with SHA-256 \(digest), not the \(sha256) it was stored with" }
        }
        return nil
    }

    /// A file of the system's `wal/`: `NAME.lz4` (a completed segment, one LZ4 frame) or `TTTTTTTT.history`.
    /// `plain` is its content as opened, nil when it could not be read (it still counts as present).
    public mutating func walFile(_ fileName: String, system: UInt64, location: String, plain: Data?) {
        if let tli = timeline(ofHistoryFileName: fileName) {
            systems[system, default: .init()].historyFiles[tli] = location
            guard let plain else { return }
            do {
                let entries = try parseTimelineHistory(String(decoding: plain, as: UTF8.self))
                if let last = entries.last, last.parent < tli {
                    systems[system, default: .init()].histories[tli] = entries
                } else {
                    report(
                        VerifyProblem(
                            .critical, location, "does not name a parent timeline below \(tli)",
                            hint: "the history file is not PostgreSQL's: copy the primary's pg_wal/\(fileName) over it"))
                }
            } catch {
                report(
                    VerifyProblem(
                        .critical, location, "is not a timeline history file: \(error)",
                        hint: "copy the primary's pg_wal/\(fileName) over it"))
            }
            return
        }
        guard fileName.hasSuffix(".lz4"), fileName.count == 28,
            fileName.prefix(24).allSatisfy({ $0.isHexDigit && !$0.isLowercase })
        else {
            report(
                VerifyProblem(
                    .warning, location, "is neither a completed segment (NAME.lz4) nor a history file",
                    hint: "walship does not write such a file there; remove it if nothing else needs it"))
            return
        }
        let name = String(fileName.prefix(24))
        systems[system, default: .init()].segmentFiles[name] = location
        guard let plain else { return }
        let known = systems[system]?.segmentSize
        switch Self.checkSegment(name: name, frame: plain, system: system, segmentSize: known) {
        case .success(let size):
            if known == nil { systems[system, default: .init()].segmentSize = size }
        case .failure(let problem):
            report(problem.at(location))
        }
    }

    /// A pending problem without its location.
    public struct Finding: Error, Equatable {
        public var severity: HealthCheck.Code
        public var problem: String
        public var hint: String
        func at(_ location: String) -> VerifyProblem { VerifyProblem(severity, location, problem, hint: hint) }
    }

    static let reupload =
        "delete the object and restart walship receive while the spool still holds the file (it uploads what the store lacks); otherwise take a new base backup"

    /// A completed segment: one whole LZ4 frame (its content checksum checked) of one segment's size, every page
    /// header PostgreSQL's (magic, flags, the address its name implies, this system, a timeline not above the name's).
    public static func checkSegment(
        name: String, frame: Data, system: UInt64, segmentSize: WALSegmentSize?
    ) -> Result<WALSegmentSize, Finding> {
        let segment: [UInt8]
        do {
            segment = try frame.withUnsafeBytes { raw throws(LZ4.FrameError) in
                try LZ4.decompressFrame(raw, maxOutputBytes: 1 << 30)
            }
        } catch {
            return .failure(Finding(severity: .critical, problem: "is not a whole LZ4 frame: \(error)", hint: reupload))
        }
        guard let size = WALSegmentSize(bytes: UInt64(segment.count)) else {
            return .failure(
                Finding(
                    severity: .critical,
                    problem: "holds \(segment.count) bytes, not a WAL segment (a power of two, 1 MiB to 1 GiB)",
                    hint: reupload))
        }
        if let segmentSize, segmentSize != size {
            return .failure(
                Finding(
                    severity: .critical, problem: "holds \(segment.count) bytes, but this system's segments are \(segmentSize)",
                    hint: reupload))
        }
        guard let parsed = SegmentName(name, segmentSize: size) else {
            return .failure(
                Finding(
                    severity: .critical, problem: "\(name) is not a segment name for \(size) segments",
                    hint: "walship does not write such a name; remove the file if nothing else needs it"))
        }
        var validator = WALSegmentValidator(
            systemIdentifier: system, segmentSize: size, timeline: parsed.timeline, segmentStart: parsed.startLSN)
        do {
            try segment.withUnsafeBytes { try validator.validate(segment: $0, previousLength: 0) }
        } catch {
            return .failure(
                Finding(
                    severity: .critical, problem: "is not the WAL its name says: \(error)",
                    hint: "this file must not be replayed; " + reupload))
        }
        return .success(size)
    }

    // MARK: Backups

    /// How a backup's `base.tar.lz4` was read.
    public enum BackupArchive {
        /// The LZ4 frame, opened: its size and CRC-32C are checked here against the record.
        case frame(Data)
        /// Checked by the caller (a spool's file, streamed by `BackupVerification`): nil when it matched.
        case checked(problem: String?)
        /// Present but not readable (its problem is recorded already).
        case unreadable
        case missing
    }

    /// One backup directory `base/<id>/`: its record (`backup.json` as opened; nil when absent, `recordReadable`
    /// false when present but not readable), its archive and whether its manifest is there.
    public mutating func backup(
        id: String, system: UInt64, location: String, record: Data?, recordReadable: Bool = true,
        archive: BackupArchive, manifestPresent: Bool
    ) {
        if systems[system] == nil { systems[system] = SystemRecord() }
        guard let record else {
            if recordReadable {
                report(
                    VerifyProblem(
                        .warning, location, "backup \(id) is incomplete: it has no backup.json",
                        hint:
                            "an upload cut short or still under way: walship receive uploads the record last, once the rest is confirmed; it is not a backup to restore from"
                    ))
            }
            return
        }
        let info: BackupInfo
        do {
            info = try BackupCatalog.decodeRecord(record, origin: location + "backup.json")
        } catch {
            report(
                VerifyProblem(
                    .critical, location + "backup.json", "\(error)", hint: "this backup cannot be restored; take a new one"))
            return
        }
        guard info.systemIdentifier == String(system), info.id == id else {
            report(
                VerifyProblem(
                    .critical, location + "backup.json",
                    "is the record of backup \(info.id) of system \(info.systemIdentifier), found as backup \(id) of system \(system)",
                    hint: "a record copied from elsewhere: this backup cannot be trusted; take a new one"))
            return
        }
        guard info.status == .complete else {
            report(
                VerifyProblem(
                    .warning, location, "backup \(id) is incomplete: it waits for its WAL up to \(info.stopLSN)",
                    hint: "it completes once the spool holds that WAL (is walship send running?)"))
            return
        }
        var whole = true
        switch archive {
        case .frame(let frame):
            if let problem = Self.checkBackupArchive(frame, record: info) {
                report(
                    VerifyProblem(
                        .critical, location + "base.tar.lz4", problem, hint: "this backup cannot be restored; take a new one"))
                whole = false
            }
        case .checked(let problem?):
            report(
                VerifyProblem(
                    .critical, location + "base.tar.lz4", problem, hint: "this backup cannot be restored; take a new one"))
            whole = false
        case .checked(nil):
            break
        case .unreadable:
            whole = false
        case .missing:
            report(
                VerifyProblem(
                    .critical, location, "backup \(id) has a record but no base.tar.lz4",
                    hint: "this backup cannot be restored; take a new one"))
            whole = false
        }
        if !manifestPresent {
            report(
                VerifyProblem(
                    .critical, location, "backup \(id) has no backup_manifest",
                    hint: "pg_verifybackup and a restore need it; take a new backup"))
            whole = false
        }
        if whole { systems[system, default: .init()].backups.append((info, location)) }
    }

    /// A backup's archive: one whole LZ4 frame whose content has the record's size and CRC-32C. Read a piece at a
    /// time, so the content is never held whole beside the frame.
    public static func checkBackupArchive(_ frame: Data, record: BackupInfo) -> String? {
        guard let expected = UInt32(record.archiveCRC32C, radix: 16) else {
            return "its record holds no valid CRC-32C (\"\(record.archiveCRC32C)\")"
        }
        let expectation = "expected CRC-32C \(record.archiveCRC32C) over \(record.archiveBytes) bytes"
        let reader: LZ4.FrameReader
        do { reader = try LZ4.FrameReader() } catch { return "cannot be checked: \(error)" }
        var crc: UInt32 = 0
        var content: UInt64 = 0
        var consumed = 0
        var output: [UInt8] = []
        let bytes = [UInt8](frame)
        while !reader.finished {
            output.removeAll(keepingCapacity: true)
            let used: Int
            do {
                used = try bytes.withUnsafeBytes { raw throws(LZ4.FrameError) in
                    try reader.read(UnsafeRawBufferPointer(rebasing: raw[consumed...]), into: &output, maxOutput: 1 << 20)
                }
            } catch {
                return "cannot be decompressed after \(content) bytes of content (\(error)); \(expectation)"
            }
            output.withUnsafeBytes { crc = CRC32C.update(crc, $0) }
            content += UInt64(output.count)
            consumed += used
            if used == 0 && output.isEmpty && !reader.finished {
                return "ends inside its LZ4 frame after \(content) bytes of content; \(expectation)"
            }
        }
        if consumed != bytes.count { return "has \(bytes.count - consumed) bytes after its LZ4 frame; \(expectation)" }
        guard crc == expected, content == record.archiveBytes else {
            return "holds an archive with CRC-32C \(String(crc, radix: 16)) over \(content) bytes; \(expectation)"
        }
        return nil
    }

    // MARK: The verdict

    public struct TimelineSpan: Sendable, Equatable {
        public var system: UInt64
        public var timeline: TimeLineID
        public var first: String
        public var last: String
        public var segments: Int
    }

    public struct Report: Sendable {
        public var origin: String
        public var code: HealthCheck.Code
        public var problems: [VerifyProblem]
        public var objectsRead: Int
        public var bytesRead: UInt64
        public var timelines: [TimelineSpan]
        /// Complete backups found whole.
        public var backups: Int
        public var keyUse: [String: Int]
        public var unencryptedObjects: Int

        /// `OK: archive s3://…: 41 objects read (120 MB), …`, the Nagios status line.
        public var summary: String {
            var parts = ["\(objectsRead) objects read (\(formatSize(bytesRead)))"]
            let spans = timelines.map {
                "\($0.timeline) (\($0.segments) segments \($0.first)…\($0.last))"
            }
            parts.append(spans.isEmpty ? "no WAL" : "timelines " + spans.joined(separator: ", "))
            parts.append("\(backups) backup\(backups == 1 ? "" : "s")")
            if keyUse.isEmpty {
                parts.append("not encrypted")
            } else {
                let keys = keyUse.sorted { $0.key < $1.key }.map { "\($0.key) (\($0.value) object\($0.value == 1 ? "" : "s"))" }
                parts.append("key ids in use: " + keys.joined(separator: ", "))
                if unencryptedObjects > 0 { parts.append("\(unencryptedObjects) objects not encrypted") }
            }
            let count = problems.count
            return "\(code.label): \(origin): " + parts.joined(separator: "; ")
                + (count == 0 ? "" : "; \(count) problem\(count == 1 ? "" : "s")")
        }
    }

    /// Adds what only the whole listing shows (gaps, missing history files, WAL a backup lacks, mixed
    /// encryption, sealed objects left unchecked) and gives the verdict.
    public func finish() -> Report {
        var problems = problems
        var spans: [TimelineSpan] = []
        for (system, record) in systems.sorted(by: { $0.key < $1.key }) {
            let (found, systemSpans) = Self.continuity(system: system, record: record)
            problems += found
            spans += systemSpans
        }
        if unencryptedObjects > 0, !keyUse.isEmpty {
            problems.append(
                VerifyProblem(
                    .warning, firstUnencrypted ?? origin,
                    "\(unencryptedObjects) object\(unencryptedObjects == 1 ? " is" : "s are") not encrypted (this one among them), while \(keyUse.values.reduce(0, +)) are",
                    hint:
                        "archived before --encryption-keyring was given; they stay readable by anyone with access to the bucket until they are removed"
                ))
        }
        if sealedUnopened > 0 {
            problems.append(
                VerifyProblem(
                    .unknown, origin, "\(sealedUnopened) encrypted objects were not opened, so their content is unchecked",
                    hint: "give --encryption-keyring with the archive's keyring"))
        }
        let code = problems.map(\.severity).max() ?? .ok
        return Report(
            origin: origin, code: code, problems: problems, objectsRead: objectsRead, bytesRead: bytesRead,
            timelines: spans, backups: systems.values.reduce(0) { $0 + $1.backups.count }, keyUse: keyUse,
            unencryptedObjects: unencryptedObjects)
    }

    /// Each timeline's segments without a hole from its first to its last; the history file of every timeline
    /// after the first; the parent's WAL reaching the switch and the child's starting there; the WAL from each
    /// whole backup's start to its stop.
    static func continuity(system: UInt64, record: SystemRecord) -> ([VerifyProblem], [TimelineSpan]) {
        var problems: [VerifyProblem] = []
        let size = record.segmentSize ?? .default
        let whereWAL = record.walLocation
        var byTimeline: [TimeLineID: [UInt64]] = [:]
        for name in record.segmentFiles.keys.sorted() {
            guard let parsed = SegmentName(name, segmentSize: size) else {
                problems.append(
                    VerifyProblem(
                        .critical, record.segmentFiles[name] ?? whereWAL, "\(name) is not a segment name for \(size) segments",
                        hint: "walship does not write such a name; remove the file if nothing else needs it"))
                continue
            }
            byTimeline[parsed.timeline, default: []].append(parsed.number)
        }
        func name(_ timeline: TimeLineID, _ number: UInt64) -> String {
            SegmentName(timeline: timeline, number: number, segmentSize: size).description
        }
        var spans: [TimelineSpan] = []
        for (tli, numbers) in byTimeline.sorted(by: { $0.key < $1.key }) {
            let sorted = numbers.sorted()
            spans.append(
                TimelineSpan(
                    system: system, timeline: tli, first: name(tli, sorted.first!), last: name(tli, sorted.last!),
                    segments: sorted.count))
            for (a, b) in zip(sorted, sorted.dropFirst()) where b > a + 1 {
                let missing = b - a - 1
                problems.append(
                    VerifyProblem(
                        .critical, whereWAL,
                        "timeline \(tli) has a gap: \(missing == 1 ? "segment \(name(tli, a + 1)) is" : "\(missing) segments \(name(tli, a + 1))…\(name(tli, b - 1)) are") missing between \(name(tli, a)) and \(name(tli, b))",
                        hint:
                            "recovery cannot replay past the gap; copy the segments back from the spool or the primary if they still exist (walship restore-wal NAME DEST --spool …), else take a new base backup"
                    ))
            }
            if tli > 1, record.historyFiles[tli] == nil {
                problems.append(
                    VerifyProblem(
                        .critical, whereWAL, "timeline \(tli) has WAL but no history file \(historyFileName(timeline: tli))",
                        hint:
                            "recovery cannot follow the switch to timeline \(tli) without it; copy it from the primary's pg_wal/ (or the spool)"
                    ))
            }
        }
        // The switches the history files name: the parent's WAL reaches the switch, the child's starts there.
        for (tli, entries) in record.histories.sorted(by: { $0.key < $1.key }) {
            guard let last = entries.last, let child = byTimeline[tli]?.min(), let parentEnd = byTimeline[last.parent]?.max()
            else { continue }
            let switchSegment = size.segmentNumber(of: last.switchPoint)
            let hint =
                "recovery cannot cross the switch to timeline \(tli) at \(last.switchPoint); copy the segments back from the spool or the primary if they still exist, else take a new base backup"
            if child > switchSegment {
                problems.append(
                    VerifyProblem(
                        .critical, whereWAL,
                        "timeline \(tli) begins at \(last.switchPoint) (segment \(name(tli, switchSegment))), but its first segment is \(name(tli, child))",
                        hint: hint))
            }
            if switchSegment > 0, parentEnd < switchSegment - 1 {
                problems.append(
                    VerifyProblem(
                        .critical, whereWAL,
                        "timeline \(last.parent) ends at \(name(last.parent, parentEnd)), before its switch to timeline \(tli) at \(last.switchPoint): \(name(last.parent, parentEnd + 1))…\(name(last.parent, switchSegment - 1)) are missing",
                        hint: hint))
            }
        }
        for backup in record.backups {
            guard let start = LSN(backup.info.startLSN), let stop = LSN(backup.info.stopLSN) else {
                problems.append(
                    VerifyProblem(
                        .critical, backup.location + "backup.json", "holds no valid start or stop LSN",
                        hint: "this backup cannot be restored; take a new one"))
                continue
            }
            let tli = backup.info.timeline
            // A backup taken across a switch finds its first segments on an ancestor timeline.
            let have = Set(byTimeline.filter { $0.key <= tli }.values.joined())
            let needed = size.segmentNumber(of: start)...size.segmentNumber(of: stop)
            let lacking = needed.filter { !have.contains($0) }
            if let first = lacking.first {
                problems.append(
                    VerifyProblem(
                        .critical, backup.location,
                        "backup \(backup.info.id) needs the WAL from \(backup.info.startLSN) to \(backup.info.stopLSN), and \(lacking.count == 1 ? "segment \(name(tli, first)) is" : "\(lacking.count) of its segments are, from \(name(tli, first)),") missing",
                        hint: "a restore from this backup cannot reach a consistent state; take a new base backup"))
            }
        }
        return (problems, spans)
    }
}

func formatSize(_ bytes: UInt64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1000, unit < units.count - 1 {
        value /= 1000
        unit += 1
    }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f", value) + " " + units[unit]
}
