rule UPX_Packed_PE : packer
{
    meta:
        description = "PE file packed with UPX (section names and stub marker)"
        severity = 2
    strings:
        $upx0 = "UPX0" ascii
        $upx1 = "UPX1" ascii
        $upx_marker = "UPX!" ascii
    condition:
        uint16(0) == 0x5A4D and uint32(uint32(0x3C)) == 0x00004550 and 2 of them
}

rule UPX_Packed_ELF : packer
{
    meta:
        description = "ELF file packed with UPX"
        severity = 2
    strings:
        $upx_marker = "UPX!" ascii
        $info = "$Info: This file is packed with the UPX executable packer" ascii
    condition:
        uint32(0) == 0x464C457F and any of them
}
