import Foundation
import Testing

@testable import ObjectStore

/// Every expected value here is AWS's published one, never one this code produced: the four examples of "Signature
/// Calculations for the Authorization Header: Transferring Payload in a Single Chunk" in the S3 API reference
/// (examplebucket, AKIAIOSFODNN7EXAMPLE, 24 May 2013), and cases of the general Signature Version 4 test suite
/// (AKIDEXAMPLE, service "service", 30 August 2015).
@Suite struct SigV4S3ExampleTests {
    static let signer = SigV4Signer(
        credentials: AWSCredentials(
            accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        region: "us-east-1", service: "s3")
    /// 2013-05-24T00:00:00Z.
    static let date = Date(timeIntervalSince1970: 1_369_353_600)
    static let host = (name: "Host", value: "examplebucket.s3.amazonaws.com")
    static let empty = SigV4Signer.emptyPayloadHash

    @Test func getObject() {
        let signed = Self.signer.sign(
            .init(
                method: "GET", path: "/test.txt",
                headers: [Self.host, ("Range", "bytes=0-9"), ("x-amz-content-sha256", Self.empty)],
                payloadHash: Self.empty),
            at: Self.date)
        #expect(
            signed.canonicalRequest == """
                GET
                /test.txt

                host:examplebucket.s3.amazonaws.com
                range:bytes=0-9
                x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
                x-amz-date:20130524T000000Z

                host;range;x-amz-content-sha256;x-amz-date
                e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
                """)
        #expect(
            signed.stringToSign == """
                AWS4-HMAC-SHA256
                20130524T000000Z
                20130524/us-east-1/s3/aws4_request
                7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972
                """)
        #expect(signed.signature == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
        #expect(
            signed.authorization
                == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
                + "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
                + "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    }

    @Test func putObject() {
        let body = Data("Welcome to Amazon S3.".utf8)
        let hash = SigV4Signer.payloadHash(body)
        #expect(hash == "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072")
        let signed = Self.signer.sign(
            .init(
                method: "PUT", path: "test$file.text",
                headers: [
                    Self.host, ("Date", "Fri, 24 May 2013 00:00:00 GMT"), ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
                    ("x-amz-content-sha256", hash),
                ],
                payloadHash: hash),
            at: Self.date)
        #expect(signed.canonicalRequest.split(separator: "\n", omittingEmptySubsequences: false)[1] == "/test%24file.text")
        #expect(
            signed.stringToSign.hasSuffix("\n9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d"))
        #expect(signed.signature == "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")
        #expect(signed.authorization.contains("SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,"))
    }

    @Test func getBucketLifecycle() {
        let signed = Self.signer.sign(
            .init(
                method: "GET", path: "/", query: [("lifecycle", "")],
                headers: [Self.host, ("x-amz-content-sha256", Self.empty)], payloadHash: Self.empty),
            at: Self.date)
        #expect(signed.canonicalRequest.split(separator: "\n", omittingEmptySubsequences: false)[2] == "lifecycle=")
        #expect(
            signed.stringToSign.hasSuffix("\n9766c798316ff2757b517bc739a67f6213b4ab36dd5da2f94eaebf79c77395ca"))
        #expect(signed.signature == "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543")
    }

    @Test func listObjects() {
        let signed = Self.signer.sign(
            .init(
                method: "GET", path: "/", query: [("prefix", "J"), ("max-keys", "2")],
                headers: [Self.host, ("x-amz-content-sha256", Self.empty)], payloadHash: Self.empty),
            at: Self.date)
        #expect(
            signed.canonicalRequest.split(separator: "\n", omittingEmptySubsequences: false)[2] == "max-keys=2&prefix=J")
        #expect(
            signed.stringToSign.hasSuffix("\ndf57d21db20da04d7fa30298dd4488ba3a2b47ca3a489c74750e0f1e7df1b9b7"))
        #expect(signed.signature == "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")
    }
}

@Suite struct SigV4TestSuiteTests {
    static let signer = SigV4Signer(
        credentials: AWSCredentials(
            accessKeyID: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        region: "us-east-1", service: "service")
    /// 2015-08-30T12:36:00Z.
    static let date = Date(timeIntervalSince1970: 1_440_938_160)

    static func sign(path: String = "/", query: [(name: String, value: String)] = []) -> SigV4Signer.Signature {
        signer.sign(
            .init(
                method: "GET", path: path, query: query, headers: [("Host", "example.amazonaws.com")],
                payloadHash: SigV4Signer.emptyPayloadHash),
            at: date)
    }

    @Test func getVanilla() {
        let signed = Self.sign()
        #expect(
            signed.canonicalRequest == """
                GET
                /

                host:example.amazonaws.com
                x-amz-date:20150830T123600Z

                host;x-amz-date
                e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
                """)
        #expect(
            signed.stringToSign == """
                AWS4-HMAC-SHA256
                20150830T123600Z
                20150830/us-east-1/service/aws4_request
                bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63
                """)
        #expect(
            signed.authorization
                == "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
                + "SignedHeaders=host;x-amz-date, "
                + "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
        #expect(signed.amzDate == "20150830T123600Z")
    }

    @Test func queryOrderedByName() {
        let signed = Self.sign(query: [("Param2", "value2"), ("Param1", "value1")])
        #expect(signed.canonicalRequest.contains("\nParam1=value1&Param2=value2\n"))
        #expect(signed.stringToSign.hasSuffix("\n816cd5b414d056048ba4f7c5386d6e0533120fb1fcfa93762cf0fc39e2cf19e0"))
        #expect(signed.signature == "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500")
    }

    @Test func oneQueryParameter() {
        #expect(
            Self.sign(query: [("Param1", "value1")]).signature
                == "a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb")
    }

    @Test func unreservedCharactersStayUnencoded() {
        let unreserved = "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
        let signed = Self.sign(query: [(unreserved, unreserved)])
        #expect(signed.canonicalRequest.contains("\n\(unreserved)=\(unreserved)\n"))
        #expect(signed.signature == "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197")
    }

    @Test func utf8QueryAndPath() {
        let query = Self.sign(query: [("ሴ", "bar")])
        #expect(query.canonicalRequest.contains("\n%E1%88%B4=bar\n"))
        #expect(query.signature == "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04")
        let path = Self.sign(path: "/ሴ")
        #expect(path.canonicalRequest.hasPrefix("GET\n/%E1%88%B4\n"))
        #expect(path.signature == "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85")
    }

    /// AWS's "Examples of how to derive a signing key for Signature Version 4" (iam, 15 February 2012).
    @Test func derivedSigningKey() {
        let signer = SigV4Signer(credentials: Self.signer.credentials, region: "us-east-1", service: "iam")
        let key = signer.signingKey(day: "20120215").withUnsafeBytes { Array($0) }
        #expect(SigV4Signer.hex(key) == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d")
    }
}

@Suite struct SigV4DetailTests {
    @Test func headerValuesAreTrimmedAndCollapsedAndNamesLowered() {
        let (canonical, signed) = SigV4Signer.canonicalHeaders([
            ("My-Header1", "  value1  with   spaces "), ("host", "h"), ("my-header1", "second"),
        ])
        #expect(canonical == "host:h\nmy-header1:value1 with spaces,second\n")
        #expect(signed == "host;my-header1")
    }

    @Test func keysAreEncodedSegmentBySegment() {
        #expect(
            SigV4Signer.canonicalPath("/bucket/a b/c+d/000000010000000000000001")
                == "/bucket/a%20b/c%2Bd/000000010000000000000001")
    }

    @Test func aSessionTokenIsSigned() {
        let signer = SigV4Signer(
            credentials: AWSCredentials(accessKeyID: "AKID", secretAccessKey: "secret", sessionToken: "token"),
            region: "us-east-1")
        let signed = signer.sign(
            .init(method: "GET", path: "/b", headers: [("host", "h")], payloadHash: SigV4Signer.emptyPayloadHash),
            at: Date(timeIntervalSince1970: 0))
        #expect(signed.canonicalRequest.contains("x-amz-security-token:token\n"))
        #expect(signed.amzDate == "19700101T000000Z")
    }

    @Test func theSecretNeverShowsInADescription() {
        let credentials = AWSCredentials(accessKeyID: "AKID", secretAccessKey: "very-secret")
        #expect(!"\(credentials)".contains("very-secret"))
        #expect(!String(reflecting: credentials).contains("very-secret"))
    }
}
