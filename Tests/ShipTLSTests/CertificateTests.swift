import Foundation
import NIOSSL
import Testing
import X509
@testable import ShipTLS

@Suite struct CertificateAuthorityTests {
    func temporaryDirectory() -> String {
        NSTemporaryDirectory() + "walship-certs-\(UUID().uuidString)"
    }

    @Test func createsAMatchingPrivateSet() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let created = try CertificateAuthority.create(in: directory, receiverNames: ["dr.example", "127.0.0.1"],
                                                      senderName: "primary-sidecar", validDays: 30)
        #expect(created.files.count == 6)
        for path in created.files {
            let mode = (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)?.intValue
            #expect(mode == 0o600, "\(path)")
        }
        // Both ends' contexts load: each key fits its certificate.
        _ = try TLSFiles(certificate: directory + "/receiver.crt", privateKey: directory + "/receiver.key",
                         authority: directory + "/ca.crt").serverContext()
        _ = try TLSFiles(certificate: directory + "/sender.crt", privateKey: directory + "/sender.key",
                         authority: directory + "/ca.crt").clientContext()
        let receiver = try NIOSSLCertificate.fromPEMFile(directory + "/receiver.crt")[0]
        let sender = try NIOSSLCertificate.fromPEMFile(directory + "/sender.crt")[0]
        #expect(certificateName(receiver) == "dr.example")
        #expect(certificateName(sender) == "primary-sidecar")
        let parsed = try Certificate(derEncoded: try receiver.toDERBytes())
        let names = try #require(try parsed.extensions.subjectAlternativeNames)
        #expect(names.contains(.dnsName("dr.example")))
        #expect(names.contains { if case .ipAddress = $0 { true } else { false } })
        #expect(parsed.notValidAfter.timeIntervalSinceNow > 29 * 86400)
    }

    @Test func neverOverwritesKeys() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try CertificateAuthority.create(in: directory, receiverNames: ["a"], senderName: "b", validDays: 1)
        #expect(throws: TLSSetupError.self) {
            _ = try CertificateAuthority.create(in: directory, receiverNames: ["a"], senderName: "b", validDays: 1)
        }
    }

    @Test func mismatchedOrMissingFilesAreClearErrors() throws {
        let one = temporaryDirectory(), two = temporaryDirectory()
        defer {
            try? FileManager.default.removeItem(atPath: one)
            try? FileManager.default.removeItem(atPath: two)
        }
        _ = try CertificateAuthority.create(in: one, receiverNames: ["a"], senderName: "b", validDays: 1)
        _ = try CertificateAuthority.create(in: two, receiverNames: ["a"], senderName: "b", validDays: 1)
        let mismatched = TLSFiles(certificate: one + "/receiver.crt", privateKey: two + "/receiver.key", authority: one + "/ca.crt")
        #expect(throws: TLSSetupError.self) { _ = try mismatched.serverContext() }
        let missing = TLSFiles(certificate: one + "/nope.crt", privateKey: one + "/receiver.key", authority: one + "/ca.crt")
        let error = #expect(throws: TLSSetupError.self) { _ = try missing.serverContext() }
        #expect(error?.description.contains("--tls-cert") == true)
        let notPEM = TLSFiles(certificate: one + "/receiver.crt", privateKey: one + "/receiver.key", authority: one + "/receiver.key")
        #expect(throws: TLSSetupError.self) { _ = try notPEM.serverContext() }
    }

    @Test func addressesAreVerifiedWithoutSNI() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try CertificateAuthority.create(in: directory, receiverNames: ["a"], senderName: "b", validDays: 1)
        let context = try TLSFiles(certificate: directory + "/sender.crt", privateKey: directory + "/sender.key",
                                   authority: directory + "/ca.crt").clientContext()
        #expect(ClientTLS(context: context, serverName: nil).serverName(connectingTo: "10.1.2.3") == nil)
        #expect(ClientTLS(context: context, serverName: nil).serverName(connectingTo: "::1") == nil)
        #expect(ClientTLS(context: context, serverName: nil).serverName(connectingTo: "dr.example") == "dr.example")
        #expect(ClientTLS(context: context, serverName: "dr").serverName(connectingTo: "10.1.2.3") == "dr")
    }
}

@Suite struct TLSReasonTests {
    @Test func boringSSLStacksBecomeReasons() {
        let raw = "handshake failed: sslError([Error: 268435581 error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED at /x/handshake.cc:320])"
        #expect(readableTLSReason(raw).hasPrefix("CERTIFICATE_VERIFY_FAILED: "))
        #expect(readableTLSReason("error:1000:SSL routines:OPENSSL_internal:SOMETHING_NEW at /x").hasPrefix("SOMETHING_NEW"))
        #expect(readableTLSReason("plain words") == "plain words")
    }

    @Test func aDroppedConnectionIsNotATLSFailure() {
        #expect(tlsFailure(NIOSSLError.uncleanShutdown) == nil)
        #expect(tlsFailure(NIOSSLError.handshakeFailed(.sslError([]))) != nil)
        struct Other: Error {}
        #expect(tlsFailure(Other()) == nil)
    }
}
