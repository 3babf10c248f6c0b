//! The import hash of a PE file, computed the way pefile's `get_imphash`
//! does (and with it YARA's `pe.imphash()` and VirusTotal): for each
//! imported function, in import-directory order, `dll.function` with the
//! DLL name lowercased and a `.dll`, `.ocx` or `.sys` extension dropped,
//! the function lowercased; joined with `,`; MD5 in hex.
//!
//! Imports by ordinal become `ordN`, except for `ws2_32.dll` and
//! `wsock32.dll`, whose ordinals are looked up in pefile's frozen imphash
//! table (below). Approximation: pefile also names `oleaut32.dll`
//! ordinals from a table of about 400 entries that is not carried here,
//! so a PE importing oleaut32 functions by ordinal gets a different
//! imphash than pefile gives it (`oleaut32.ordN` instead of the name).

use md5::{Digest, Md5};

/// One imported function, as the import lookup table names it.
#[derive(Debug, Clone, Copy)]
pub enum Import<'a> {
    Name(&'a str),
    Ordinal(u16),
}

/// MD5 of the import list, or `None` when there is nothing to hash.
pub fn imphash<'a>(imports: impl IntoIterator<Item = (&'a str, Import<'a>)>) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for (dll, import) in imports {
        let dll = dll.to_ascii_lowercase();
        let lib = match dll.rsplit_once('.') {
            Some((stem, ext)) if ["ocx", "sys", "dll"].contains(&ext) => stem.to_string(),
            _ => dll.clone(),
        };
        let func = match import {
            Import::Name(name) => name.to_ascii_lowercase(),
            Import::Ordinal(n) => match ordinal_name(&dll, n) {
                Some(name) => name.to_ascii_lowercase(),
                None => format!("ord{n}"),
            },
        };
        // pefile skips entries without a name.
        if func.is_empty() {
            continue;
        }
        parts.push(format!("{lib}.{func}"));
    }
    if parts.is_empty() {
        return None;
    }
    Some(hex::encode(Md5::digest(parts.join(",").as_bytes())))
}

fn ordinal_name(dll: &str, ordinal: u16) -> Option<&'static str> {
    match dll {
        "ws2_32.dll" | "wsock32.dll" => WS2_32
            .binary_search_by_key(&ordinal, |(n, _)| *n)
            .ok()
            .map(|i| WS2_32[i].1),
        _ => None,
    }
}

/// Winsock's exports by ordinal (sorted), as pefile's imphash uses them.
const WS2_32: &[(u16, &str)] = &[
    (1, "accept"),
    (2, "bind"),
    (3, "closesocket"),
    (4, "connect"),
    (5, "getpeername"),
    (6, "getsockname"),
    (7, "getsockopt"),
    (8, "htonl"),
    (9, "htons"),
    (10, "ioctlsocket"),
    (11, "inet_addr"),
    (12, "inet_ntoa"),
    (13, "listen"),
    (14, "ntohl"),
    (15, "ntohs"),
    (16, "recv"),
    (17, "recvfrom"),
    (18, "select"),
    (19, "send"),
    (20, "sendto"),
    (21, "setsockopt"),
    (22, "shutdown"),
    (23, "socket"),
    (24, "GetAddrInfoW"),
    (25, "GetNameInfoW"),
    (26, "WSApSetPostRoutine"),
    (27, "FreeAddrInfoW"),
    (28, "WPUCompleteOverlappedRequest"),
    (29, "WSAAccept"),
    (30, "WSAAddressToStringA"),
    (31, "WSAAddressToStringW"),
    (32, "WSACloseEvent"),
    (33, "WSAConnect"),
    (34, "WSACreateEvent"),
    (35, "WSADuplicateSocketA"),
    (36, "WSADuplicateSocketW"),
    (37, "WSAEnumNameSpaceProvidersA"),
    (38, "WSAEnumNameSpaceProvidersW"),
    (39, "WSAEnumNetworkEvents"),
    (40, "WSAEnumProtocolsA"),
    (41, "WSAEnumProtocolsW"),
    (42, "WSAEventSelect"),
    (43, "WSAGetOverlappedResult"),
    (44, "WSAGetQOSByName"),
    (45, "WSAGetServiceClassInfoA"),
    (46, "WSAGetServiceClassInfoW"),
    (47, "WSAGetServiceClassNameByClassIdA"),
    (48, "WSAGetServiceClassNameByClassIdW"),
    (49, "WSAHtonl"),
    (50, "WSAHtons"),
    (51, "gethostbyaddr"),
    (52, "gethostbyname"),
    (53, "getprotobyname"),
    (54, "getprotobynumber"),
    (55, "getservbyname"),
    (56, "getservbyport"),
    (57, "gethostname"),
    (58, "WSAInstallServiceClassA"),
    (59, "WSAInstallServiceClassW"),
    (60, "WSAIoctl"),
    (61, "WSAJoinLeaf"),
    (62, "WSALookupServiceBeginA"),
    (63, "WSALookupServiceBeginW"),
    (64, "WSALookupServiceEnd"),
    (65, "WSALookupServiceNextA"),
    (66, "WSALookupServiceNextW"),
    (67, "WSANSPIoctl"),
    (68, "WSANtohl"),
    (69, "WSANtohs"),
    (70, "WSAProviderConfigChange"),
    (71, "WSARecv"),
    (72, "WSARecvDisconnect"),
    (73, "WSARecvFrom"),
    (74, "WSARemoveServiceClass"),
    (75, "WSAResetEvent"),
    (76, "WSASend"),
    (77, "WSASendDisconnect"),
    (78, "WSASendTo"),
    (79, "WSASetEvent"),
    (80, "WSASetServiceA"),
    (81, "WSASetServiceW"),
    (82, "WSASocketA"),
    (83, "WSASocketW"),
    (84, "WSAStringToAddressA"),
    (85, "WSAStringToAddressW"),
    (86, "WSAWaitForMultipleEvents"),
    (87, "WSCDeinstallProvider"),
    (88, "WSCEnableNSProvider"),
    (89, "WSCEnumProtocols"),
    (90, "WSCGetProviderPath"),
    (91, "WSCInstallNameSpace"),
    (92, "WSCInstallProvider"),
    (93, "WSCUnInstallNameSpace"),
    (94, "WSCUpdateProvider"),
    (95, "WSCWriteNameSpaceOrder"),
    (96, "WSCWriteProviderOrder"),
    (97, "freeaddrinfo"),
    (98, "getaddrinfo"),
    (99, "getnameinfo"),
    (101, "WSAAsyncSelect"),
    (102, "WSAAsyncGetHostByAddr"),
    (103, "WSAAsyncGetHostByName"),
    (104, "WSAAsyncGetProtoByNumber"),
    (105, "WSAAsyncGetProtoByName"),
    (106, "WSAAsyncGetServByPort"),
    (107, "WSAAsyncGetServByName"),
    (108, "WSACancelAsyncRequest"),
    (109, "WSASetBlockingHook"),
    (110, "WSAUnhookBlockingHook"),
    (111, "WSAGetLastError"),
    (112, "WSASetLastError"),
    (113, "WSACancelBlockingCall"),
    (114, "WSAIsBlocking"),
    (115, "WSAStartup"),
    (116, "WSACleanup"),
    (151, "__WSAFDIsSet"),
    (500, "WEP"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pefile_conventions() {
        // md5("kernel32.loadlibrarya,kernel32.getprocaddress,ws2_32.socket,ws2_32.ord9999")
        let got = imphash([
            ("KERNEL32.dll", Import::Name("LoadLibraryA")),
            ("KERNEL32.dll", Import::Name("GetProcAddress")),
            ("WS2_32.dll", Import::Ordinal(23)),
            ("ws2_32.DLL", Import::Ordinal(9999)),
        ])
        .unwrap();
        let want = hex::encode(Md5::digest(
            b"kernel32.loadlibrarya,kernel32.getprocaddress,ws2_32.socket,ws2_32.ord9999",
        ));
        assert_eq!(got, want);
        // Other extensions stay; an unknown DLL's ordinal is ordN.
        let got = imphash([("driver.exe", Import::Ordinal(3))]).unwrap();
        assert_eq!(got, hex::encode(Md5::digest(b"driver.exe.ord3")));
        assert_eq!(imphash([]), None);
        assert!(WS2_32.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
