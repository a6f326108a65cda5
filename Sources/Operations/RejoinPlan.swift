import Foundation
import WALCore

/// The pure parts of `walship rejoin`: what pg_controldata, pg_waldump and pg_rewind print, read into facts,
/// and the rules that decide on them.
public enum RejoinPlan {
    /// `pg_controldata`'s lines (`Key:   value`) as a dictionary.
    public static func controlData(_ text: String) -> [String: String] {
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let key = line[..<colon].trimmingCharacters(in: .whitespaces)
            fields[key] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return fields
    }

    /// What the stopped old primary's control file says.
    public struct Target: Sendable, Equatable {
        public var systemIdentifier: UInt64
        public var timeline: TimeLineID
        public var state: String
        public var walLogHints: Bool
        public var dataChecksums: Bool

        public init?(controlData fields: [String: String]) {
            guard let system = fields["Database system identifier"].flatMap({ UInt64($0) }),
                let timeline = fields["Latest checkpoint's TimeLineID"].flatMap({ TimeLineID($0) }),
                let state = fields["Database cluster state"]
            else { return nil }
            systemIdentifier = system
            self.timeline = timeline
            self.state = state
            walLogHints = fields["wal_log_hints setting"] == "on"
            dataChecksums = (fields["Data page checksum version"].flatMap { Int($0) } ?? 0) != 0
        }

        /// pg_rewind can find every block changed since the fork only when hint-bit changes are WAL-logged.
        public var canRewind: Bool { walLogHints || dataChecksums }
    }

    /// Why the rewind cannot go ahead, with the way on; nil when it can.
    public static func refusal(target: Target, sourceSystem: UInt64, dataDirectory: String) -> String? {
        guard target.systemIdentifier == sourceSystem else {
            return
                "\(dataDirectory) belongs to system \(target.systemIdentifier) and the new primary is system \(sourceSystem): they never were one cluster (hint: check --pgdata and --source)"
        }
        guard target.canRewind else {
            return
                "\(dataDirectory) has neither wal_log_hints nor data checksums, so pg_rewind cannot tell which pages changed after the fork (hint: re-seed it instead: move \(dataDirectory) aside, never delete it, and build a standby of the new primary with walship backup and walship restore --standby, docs/runbook.md, Building the DR replica; set wal_log_hints = on at both sites for next time)"
        }
        return nil
    }

    /// Where the old primary's timeline left the new primary's history: nil when the new primary does not descend
    /// from it (then there is nothing to rejoin to).
    public static func forkPoint(targetTimeline: TimeLineID, sourceTimeline: TimeLineID, sourceHistory: String) -> LSN? {
        guard sourceTimeline > targetTimeline, let entries = try? parseTimelineHistory(sourceHistory) else { return nil }
        return timelineEnd(of: targetTimeline, history: entries, current: sourceTimeline)?.switchPoint
    }

    /// The old primary's WAL files that hold WAL past the fork: its timeline's segments from the fork's on.
    public static func segmentsPastFork(
        fileNames: [String], timeline: TimeLineID, fork: LSN, segmentSize: WALSegmentSize
    ) -> [String] {
        let first = segmentSize.segmentNumber(of: fork)
        return fileNames.filter { name in
            guard let segment = SegmentName(name, segmentSize: segmentSize) else { return false }
            return segment.timeline == timeline && segment.number >= first
        }.sorted()
    }

    /// What `pg_waldump` lists of the set-aside WAL: the transactions the new timeline never got.
    public struct LostWAL: Codable, Sendable, Equatable {
        public var firstLSN: String?
        public var lastLSN: String?
        public var commits: Int
        public var aborts: Int
        /// Commit times as pg_waldump prints them (the primary's clock, in the zone it was run with: UTC).
        public var firstCommitAt: String?
        public var lastCommitAt: String?
    }

    /// Reads pg_waldump's record lines (`rmgr: … lsn: X/X, prev …, desc: COMMIT 2026-12-07 10:15:02.123456 UTC`).
    public static func lostWAL(waldump output: String) -> LostWAL {
        var lost = LostWAL(commits: 0, aborts: 0)
        for line in output.split(separator: "\n") {
            guard let lsnRange = line.range(of: "lsn: ") else { continue }
            let lsn = line[lsnRange.upperBound...].prefix { $0 != "," && $0 != " " }
            if lost.firstLSN == nil { lost.firstLSN = String(lsn) }
            lost.lastLSN = String(lsn)
            guard line.contains("rmgr: Transaction"), let desc = line.range(of: "desc: ") else { continue }
            let words = line[desc.upperBound...].split(separator: " ")
            switch words.first {
            case "COMMIT", "COMMIT_PREPARED":
                lost.commits += 1
                if words.count >= 3 {
                    let time = "\(words[1]) \(words[2])"
                    if lost.firstCommitAt == nil { lost.firstCommitAt = time }
                    lost.lastCommitAt = time
                }
            case "ABORT", "ABORT_PREPARED":
                lost.aborts += 1
            default:
                break
            }
        }
        return lost
    }

    /// What pg_rewind --progress says it copied: "need to copy N MB (total source directory size is M MB)" and
    /// its last "x/y kB (100%) copied"; bytes, nil when it did not say.
    public static func rewindSizes(_ output: String) -> (copiedBytes: UInt64?, sourceBytes: UInt64?) {
        var copied: UInt64?
        var source: UInt64?
        for line in output.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) {
            if let range = line.range(of: "total source directory size is ") {
                let number = line[range.upperBound...].prefix { $0.isNumber }
                source = UInt64(number).map { $0 << 20 }
                if let need = line.range(of: "need to copy ") {
                    copied = UInt64(line[need.upperBound...].prefix { $0.isNumber }).map { $0 << 20 }
                }
            }
            if line.hasSuffix("copied"), let slash = line.firstIndex(of: "/") {
                let done = line[..<slash].split(separator: " ").last.flatMap { UInt64($0) }
                if let done { copied = done << 10 }
            }
        }
        return (copied, source)
    }

    /// The configuration files a data directory may hold, which pg_rewind replaces with the source's.
    public static let configurationFiles = ["postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf"]

    /// The settings that make the rewound server a standby of this site's receiver.
    public static func standbySettings(primaryConninfo: String, restoreCommand: String) -> [String] {
        SwitchoverPlan.standbySettings(primaryConninfo: primaryConninfo, restoreCommand: restoreCommand, by: "walship rejoin")
    }
}
