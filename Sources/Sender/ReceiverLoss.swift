import Foundation
import Logging
import Spool
import WALCore

/// What a synchronous sender does while the DR site cannot take WAL (`--on-receiver-loss`).
public enum ReceiverLossPolicy: Sendable, Equatable, CustomStringConvertible {
    /// Keep PostgreSQL's guarantee: commits wait until the DR site has their WAL on disk.
    case block
    /// After the DR site has been unreachable this long, acknowledge commits from the sender's local durable
    /// buffer so the primary keeps accepting writes; what is acknowledged but not offsite is the RPO exposure.
    case degradeAfter(Duration)

    /// Parses `block` or `degrade-after=DURATION`, DURATION as `90`, `90s`, `5m` or `1h` (the durations every
    /// option takes, in whole seconds from 1 s to 24 h).
    public init(parsing text: String) throws {
        if text == "block" {
            self = .block
            return
        }
        let prefix = "degrade-after="
        guard text.hasPrefix(prefix) else {
            throw PolicyError(
                "unknown receiver-loss policy \"\(text)\" (hint: use block, or degrade-after=DURATION such as degrade-after=30s)")
        }
        let amount = String(text.dropFirst(prefix.count))
        let span: TimeSpan
        do { span = try TimeSpan(parsing: amount) } catch {
            throw PolicyError("\"\(amount)\" is not a duration: \(error)")
        }
        guard span.isWholeSeconds, span.seconds >= 1, span.seconds <= 86_400 else {
            throw PolicyError(
                "\"\(amount)\" is not a duration between 1 s and 24 h in whole seconds (hint: degrade-after=30s, degrade-after=5m)"
            )
        }
        self = .degradeAfter(.seconds(Int64(span.seconds)))
    }

    public var description: String {
        switch self {
        case .block: "block"
        case .degradeAfter(let d): "degrade-after=\(d.components.seconds)s"
        }
    }

    public struct PolicyError: Error, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }
}

/// The sender's local durable buffer (`--buffer-dir`): WAL acknowledged to the primary while the DR site was
/// unreachable, kept until the receiver has it on disk. It is a spool of its own, in the receiver's format,
/// so durability, page validation and crash recovery are the receiver's code, and reading it back for the
/// receiver is the standby endpoint's reader.
final class LocalBuffer: Sendable {
    let directory: String
    private let spool: Spool
    private let auditPath: String

    init(directory: String, logger: Logger) throws {
        self.directory = directory
        var logger = logger
        logger[metadataKey: "walship.buffer"] = "\(directory)"
        do {
            spool = try Spool(root: directory, logger: logger)
        } catch {
            throw SenderFatalError("cannot use --buffer-dir \(directory): \(error)", kind: .setUp)
        }
        auditPath = directory + "/audit.log"
    }

    func open(system: UInt64, segmentSize: WALSegmentSize) throws -> SystemSpool {
        try spool.system(system, segmentSize: segmentSize)
    }

    /// The WAL the buffer holds on `timeline`, or nil when it holds none there.
    func range(system: UInt64, segmentSize: WALSegmentSize, timeline: TimeLineID) throws -> Range<LSN>? {
        guard let position = try position(system: system, segmentSize: segmentSize), position.timeline == timeline,
            let oldest = try open(system: system, segmentSize: segmentSize).oldestLSN(), oldest < position.durable
        else { return nil }
        return oldest..<position.durable
    }

    /// Drops the buffered WAL of a system: the receiver has all of it on disk.
    func discard(system: UInt64) throws {
        try spool.removeSystem(system)
    }

    /// Where the buffered WAL of a system ends, or nil when the buffer holds none of it.
    func position(system: UInt64, segmentSize: WALSegmentSize) throws -> SpoolPosition? {
        guard try Spool.systemIdentifiers(root: directory).contains(system) else { return nil }
        let position = try open(system: system, segmentSize: segmentSize).position
        return position.timeline == 0 ? nil : position
    }

    /// Moves the buffered WAL of a system out of the buffer's way, into `DIR/NAME`, which it returns.
    func setAside(system: UInt64, timeline: TimeLineID) throws -> String {
        let name = "\(system).timeline-\(timeline).set-aside-\(Int(Date().timeIntervalSince1970))"
        try spool.setSystemAside(system, as: name)
        return directory + "/" + name
    }

    /// The DR site's durable end as recorded when the sender last degraded: after a restart while degraded it is
    /// what the exposure is measured from, the receiver being out of reach to ask.
    func lastRecordedOffsite() -> LSN? {
        guard let text = try? String(contentsOfFile: auditPath, encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n").reversed() {
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String],
                object["event"] == "degraded", let lsn = object["offsite_durable_lsn"].flatMap(LSN.init)
            else { continue }
            return lsn
        }
        return nil
    }

    /// Appends one line to `audit.log` in the buffer directory and makes it durable: the record of when
    /// commits were acknowledged without the DR site, which outlives logs that rotate.
    func audit(_ fields: [String: String]) throws {
        var record = fields
        record["at"] = ISO8601DateFormatter().string(from: Date())
        let data = try JSONSerialization.data(withJSONObject: record, options: [.sortedKeys]) + Data("\n".utf8)
        do {
            try spool.appendDurably(Array(data), toFileNamed: "audit.log")
        } catch {
            throw SenderFatalError("cannot write \(auditPath): \(error)")
        }
    }
}

/// What becomes of WAL the local buffer still holds from an earlier outage. Decided apart from the files, so
/// that each rule is tested on its own; `Sender` carries the verdict out.
enum LeftoverBuffer: Equatable {
    /// Keep it: degrading appends to it, a link ships it first.
    case keep
    /// Drop it: the DR site has all of it.
    case discard
    /// Move it aside: the DR site has it up to the fork of the buffer's timeline, and the `bytesBeyondFork`
    /// after that (acknowledged to the old primary; nil when the fork is unknown) can never be shipped, but are
    /// kept for a person to see.
    case setAside(bytesBeyondFork: UInt64?)
    /// Do not acknowledge from the buffer now: that would need dropping WAL the DR site may lack.
    case refuseToDegrade(String)

    /// When degrading: the buffer ends at `held`, the primary is on `primaryTimeline` and its slot starts at
    /// `slotRestart` (nil when that says nothing: a slot just created, or one without a restart position).
    static func whenDegrading(held: SpoolPosition, primaryTimeline: TimeLineID, slotRestart: LSN?) -> LeftoverBuffer {
        guard held.timeline != 0 else { return .keep }
        guard held.timeline == primaryTimeline else {
            // Nothing tells from here what the DR site has of the buffer's timeline: keep all of it for the
            // receiver, and let commits wait until it can be asked.
            return .refuseToDegrade(
                "the local buffer holds WAL of timeline \(held.timeline) up to \(held.durable), acknowledged while the DR site was unreachable, and the primary is now on timeline \(primaryTimeline): the buffer is kept for the receiver, and commits wait until the receiver is back"
            )
        }
        // The slot moved past the buffer's end: the receiver acknowledged all of it since.
        guard let slotRestart else { return .keep }
        return held.durable < slotRestart ? .discard : .keep
    }

    /// On a link to a receiver whose spool ends at `receiverEnd` and is on, or about to move to,
    /// `receiverTimeline`: `fork` is where the buffer's timeline ends in the primary's history, nil when the
    /// primary's history does not say.
    static func whenLinked(
        held: SpoolPosition, receiverEnd: (timeline: TimeLineID, lsn: LSN), receiverTimeline: TimeLineID,
        fork: LSN?
    ) -> LeftoverBuffer {
        guard held.timeline != 0 else { return .keep }
        // The spool holds all the buffer holds (shipped before the link that acknowledged it ended).
        if receiverEnd.timeline == held.timeline && receiverEnd.lsn >= held.durable { return .discard }
        // A spool moves to a child timeline only once it holds its own timeline up to the fork (SystemSpool),
        // one timeline at a time: a spool on a later timeline has the buffer's WAL up to the fork.
        guard receiverTimeline > held.timeline else { return .keep }
        guard let fork else { return .setAside(bytesBeyondFork: nil) }
        return held.durable > fork ? .setAside(bytesBeyondFork: held.durable.bytesAfter(fork)) : .discard
    }
}
