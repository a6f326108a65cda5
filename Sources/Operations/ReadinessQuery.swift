import Foundation
import Spool
import StatusModel

#if canImport(Glibc)
import Glibc
#endif

/// Whether the old primary of a system is lost, as the DR site knows it: the running receiver's answer on its
/// control socket (`SPOOL/<system>/control.sock`), or, when the receiver is down, the last contact `primary.json`
/// records, judged by the same rule (`PromotionReadiness`).
public enum ReadinessQuery {
    public static let controlSocketName = "control.sock"

    public static func ask(systemDirectory: String, systemIdentifier: UInt64, now: Date = Date()) -> ReadinessReport {
        let path = systemDirectory + "/" + controlSocketName
        do {
            return try askReceiver(at: path)
        } catch {
            return fromRecords(
                systemDirectory: systemDirectory, systemIdentifier: systemIdentifier, now: now,
                receiverProblem: "walship receive does not answer on \(path) (\(error))")
        }
    }

    /// One request on the control socket, with a 2 s bound on each read and write.
    static func askReceiver(at path: String) throws -> ReadinessReport {
        let answer = try ControlSocketClient.ask("readiness", at: path)
        do {
            return try StatusDocument.decoder().decode(ReadinessReport.self, from: Data(answer))
        } catch {
            throw ReadinessQueryError(
                "the answer is not a readiness report: \(String(decoding: answer.prefix(200), as: UTF8.self))")
        }
    }

    /// The verdict from the spool's records alone: the receiver is down, so the link is down too, and only the
    /// silence since the last recorded contact can decide.
    static func fromRecords(
        systemDirectory: String, systemIdentifier: UInt64, now: Date, receiverProblem: String
    )
        -> ReadinessReport
    {
        let progress = (try? PrimaryProgressRecord.load(systemDirectory: systemDirectory)) ?? nil
        let history = CurrentMode((try? ModeHistory.load(systemDirectory: systemDirectory)) ?? [])
        // A primary.json of a receiver before these keys: when it was written is no earlier than the last contact.
        let heard = progress.map { $0.primaryLastHeardAt ?? $0.updatedAt }
        var report = ReadinessReport.assess(
            systemIdentifier: String(systemIdentifier), source: "primary.json", now: now, linkConnected: false,
            linkLastFrameAt: nil, linkSilentSince: nil, primaryLastHeardAt: heard,
            linkTimeoutSeconds: progress?.linkTimeoutSeconds ?? 30, receiverLoss: history.link?.receiverLoss,
            senderProtocolVersion: history.link?.protocolVersion, verdict: nil, mode: history.mode?.rawValue,
            modeSince: history.since)
        report.reason = "\(receiverProblem); by the last contact primary.json records: \(report.reason)"
        report.verdict = report.readiness.summary
        return report
    }
}

struct ReadinessQueryError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The client side of the receiver's control socket (`SPOOL/<system>/control.sock`): one request line, one answer.
enum ControlSocketClient {
    /// Nobody listens at the path: the receiver is not running (or has not opened this system).
    struct NotRunning: Error, CustomStringConvertible {
        let description: String
    }

    /// Sends `request` and reads the answer, with a 2 s bound on each read and write.
    static func ask(_ request: String, at path: String) throws -> [UInt8] {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ReadinessQueryError("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw ReadinessQueryError("the socket path is too long")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            let code = errno
            let text = String(cString: strerror(code))
            // No socket file, or one left by a receiver that stopped: nothing runs there.
            if code == ENOENT || code == ECONNREFUSED { throw NotRunning(description: text) }
            throw ReadinessQueryError(text)
        }
        let line = Array((request + "\n").utf8)
        guard write(fd, line, line.count) == line.count else {
            throw ReadinessQueryError("write: \(String(cString: strerror(errno)))")
        }
        var answer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while answer.count < 1 << 20 {
            let n = read(fd, &chunk, chunk.count)
            if n < 0 { throw ReadinessQueryError("read: \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            answer += chunk[0..<n]
        }
        return answer
    }
}
