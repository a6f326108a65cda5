import Foundation
import Spool
import StatusModel
import WALCore

/// `walship standby forget NAME`: removes the spool's record of a standby that will not come back, which otherwise
/// pins the WAL after its replay position forever (retention never removes WAL a known standby has not replayed).
/// Refused while that standby is connected: the endpoint would record it again at once.
public enum StandbyForget {
    /// What the running receiver said about its standbys.
    public enum Presence: Sendable, Equatable {
        /// Nothing listens on the control socket: no standby can be connected to this spool.
        case receiverNotRunning
        case answered([StandbyPresence])
        /// The receiver runs (or may) but could not be asked.
        case unknown(String)
    }

    public enum Decision: Sendable, Equatable {
        case refuse(String)
        /// Remove these records; `lines` say what that releases.
        case forget([StandbyRecord], lines: [String])
    }

    public static func decide(
        name: String, records: [StandbyRecord], presence: Presence, backups: [BackupInfo], segments: [SegmentName],
        segmentSize: WALSegmentSize
    ) -> Decision {
        let matching = records.filter { $0.name == name }
        guard !matching.isEmpty else {
            let known = records.map(\.name).sorted()
            return .refuse(
                "no standby named \(name) is recorded in this spool"
                    + (known.isEmpty
                        ? " (it records none)" : " (hint: the recorded standbys are \(known.joined(separator: ", ")))"))
        }
        switch presence {
        case .receiverNotRunning:
            break
        case .unknown(let problem):
            return .refuse(
                "cannot ask the running receiver whether standby \(name) is connected (\(problem)) (hint: run this as the receiver's user, the spool's owner; or stop the standby, see that walship status no longer lists it as connected, and stop walship receive while you forget it)"
            )
        case .answered(let standbys):
            if let live = standbys.first(where: { ($0.name == name || $0.applicationName == name) && $0.connected }) {
                return .refuse(
                    "standby \(name) is connected to the receiver now (application_name \(live.applicationName)): forgetting it would not last, as the endpoint records it again (hint: stop that standby or point its primary_conninfo elsewhere, then run this again)"
                )
            }
        }
        var lines = matching.map {
            "standby \($0.name) (\($0.viaSlot ? "by its slot" : "by application_name")) replayed up to \($0.replayedLSN), last recorded \(formatISO8601($0.updatedAt))"
        }
        let held = matching.map { segmentSize.segmentStart(of: $0.replayed) }.min() ?? .invalid
        // The least any retention keeps: WAL from the newest complete backup's start, and what other standbys need.
        let newest = backups.filter { $0.status == .complete }.max { $0.id < $1.id }.flatMap { LSN($0.startLSN) }
        let others = records.filter { $0.name != name && $0.replayed.isValid }.map { segmentSize.segmentStart(of: $0.replayed) }
        guard let newest else {
            lines.append("there is no complete base backup, so retention removes no WAL with or without this standby")
            return .forget(matching, lines: lines)
        }
        let floor = ([segmentSize.segmentStart(of: newest)] + others).min()!
        let released = segments.filter { $0.startLSN >= held && $0.endLSN <= floor }
        if released.isEmpty {
            lines.append(
                "it holds no WAL that the newest backup or another standby does not also need: forgetting it releases nothing now"
            )
        } else {
            lines.append(
                "it holds WAL from \(held); forgetting it lets retention remove up to \(released.count) segment(s) (\(formatBytes(UInt64(released.count) * UInt64(segmentSize.bytes))) before compression), \(released.first!) … \(released.last!), as --retain-backups and --retain-days allow, at the receiver's next prune"
            )
        }
        return .forget(matching, lines: lines)
    }

    /// Asks the receiver, decides, and unless `dryRun` removes the records. Returns the lines to print.
    public static func run(spool: String, system: UInt64?, name: String, dryRun: Bool) throws -> [String] {
        let reader = try SpoolReader(root: spool, system: system)
        let directory = reader.systemDirectory
        let presence: Presence
        do {
            let answer = try ControlSocketClient.ask("standbys", at: directory + "/" + ReadinessQuery.controlSocketName)
            presence = .answered(try StatusDocument.decoder().decode([StandbyPresence].self, from: Data(answer)))
        } catch is ControlSocketClient.NotRunning {
            presence = .receiverNotRunning
        } catch {
            presence = .unknown("\(error)")
        }
        let segments = try FileManager.default.contentsOfDirectory(atPath: reader.walDirectory).compactMap { file in
            file.hasSuffix(".lz4") ? SegmentName(file.dropLast(4), segmentSize: reader.segmentSize) : nil
        }.sorted()
        let decision = decide(
            name: name, records: try StandbyRegistry.list(systemDirectory: directory), presence: presence,
            backups: try BackupCatalog.list(systemDirectory: directory), segments: segments, segmentSize: reader.segmentSize)
        switch decision {
        case .refuse(let reason):
            throw StandbyForgetError(description: reason)
        case .forget(let records, let lines):
            var out = lines
            if presence == .receiverNotRunning { out.insert("walship receive is not running: no standby is connected", at: 0) }
            for record in records {
                if !dryRun { try StandbyRegistry.forget(name: record.name, viaSlot: record.viaSlot, systemDirectory: directory) }
                out.append(
                    "\(dryRun ? "would remove" : "removed") the record of standby \(record.name) in \(directory)/standbys/")
            }
            return out
        }
    }
}

public struct StandbyForgetError: Error, CustomStringConvertible {
    public let description: String
}
