import Foundation
import NIOCore
import ShipProtocol
import ShipTLS
import WALCore

/// What a receiver answered to a probe (`walship check`).
public struct ReceiverProbe: Sendable {
    public var receiverName: String
    public var resumeLSN: LSN
    public var resumeTimeline: TimeLineID
    /// The receiver's clock minus this host's, in seconds, measured at the middle of a round trip; nil when
    /// the receiver did not answer the keepalive.
    public var clockOffset: Double?
    public var roundTripSeconds: Double?
}

/// Why a probe failed, in words for an operator.
public struct ReceiverProbeError: Error, CustomStringConvertible {
    public enum Stage: Sendable { case connect, tls, refused, handshake }
    public let stage: Stage
    public let description: String
}

/// Opens a link the way `walship backup` does and closes it after the handshake: a backup-role hello does
/// not claim the system's streaming slot, so a running sender is not disturbed, yet the receiver checks
/// everything a sender's hello is checked for (TLS both ways, --allow-source, version, segment size, its
/// spool) and answers with its resume point. A keepalive asking for a reply then gives the receiver's clock.
public func probeReceiver(
    host: String, port: Int, tls: ClientTLS?, systemIdentifier: UInt64, timeline: TimeLineID,
    walSegmentSize: UInt32, senderName: String, timeout: Duration
) async throws -> ReceiverProbe {
    let channel: ShipAsyncChannel
    do {
        channel = try await connectToReceiver(host: host, port: port, linkTimeout: timeout, tls: tls)
    } catch {
        throw ReceiverProbeError(stage: .connect, description: "\(error)")
    }
    do {
        return try await channel.executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            let hello = Hello(
                role: .backup, synchronous: false, systemIdentifier: systemIdentifier,
                timeline: timeline, walSegmentSize: walSegmentSize, senderName: senderName)
            let welcome: Welcome
            switch try await exchangeHello(hello, outbound: outbound, inbound: &iterator) {
            case .welcome(let w)?: welcome = w
            case .refusal(let refusal)?:
                throw ReceiverProbeError(stage: .refused, description: "the receiver refused: \(refusal.message)")
            case let other?:
                throw ReceiverProbeError(stage: .handshake, description: "the receiver answered the hello with \(other.kind)")
            case nil:
                throw ReceiverProbeError(
                    stage: .handshake,
                    description: tls == nil
                        ? "the receiver closed the link during the handshake (hint: does it require TLS?)"
                        : "the receiver closed the link during the handshake (hint: does it trust the CA of --tls-cert?)")
            }
            var probe = ReceiverProbe(
                receiverName: welcome.receiverName, resumeLSN: welcome.resumeLSN,
                resumeTimeline: welcome.resumeTimeline)
            let sent = PostgresTimestamp.now()
            try await outbound.write(.keepalive(Keepalive(primaryEndLSN: .invalid, sendTime: sent, replyRequested: true)))
            if case .ack(let ack)? = try await iterator.next() {
                let received = PostgresTimestamp.now()
                let middle = sent.rawValue / 2 + received.rawValue / 2
                probe.clockOffset = Double(ack.receiverTime.rawValue - middle) / 1_000_000
                probe.roundTripSeconds = Double(received.rawValue - sent.rawValue) / 1_000_000
            }
            return probe
        }
    } catch let error as ReceiverProbeError {
        throw error
    } catch ShipProtocolError.peerSpeaksTLS {
        throw ReceiverProbeError(
            stage: .tls,
            description:
                "the receiver requires TLS, and the configuration says insecure (hint: give tls-cert, tls-key and tls-ca)")
    } catch let error where tlsFailure(error) != nil {
        throw ReceiverProbeError(stage: .tls, description: "TLS with the receiver failed: \(tlsFailure(error)!)")
    } catch {
        throw ReceiverProbeError(stage: .handshake, description: "the link failed during the handshake: \(error)")
    }
}
