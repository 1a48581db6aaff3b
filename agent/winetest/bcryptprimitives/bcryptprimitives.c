/*
 * A stand-in for Windows' bcryptprimitives.dll, for Wine 8.0, which has none.
 * Go's runtime (1.22 and later) fills its random numbers with ProcessPrng
 * from this DLL and stops at start without it. Here ProcessPrng is
 * RtlGenRandom (advapi32's SystemFunction036), Windows' own CSPRNG call,
 * which Wine has. Only the Windows agent's tests under Wine load it; a real
 * Windows has the real DLL. Built by .ci/wine with Debian's mingw-w64.
 */
#include <windows.h>
#include <ntsecapi.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
	while (len > 0) {
		ULONG n = len > 0x40000000 ? 0x40000000 : (ULONG)len;
		if (!RtlGenRandom(data, n))
			return FALSE;
		data += n;
		len -= n;
	}
	return TRUE;
}
