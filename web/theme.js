// Applies the saved light/dark choice before the page paints (no flash). Without a
// saved choice the page follows prefers-color-scheme.
(function () {
  try {
    var t = localStorage.getItem('cpuchat.theme');
    if (t === 'light' || t === 'dark') document.documentElement.setAttribute('data-theme', t);
  } catch (e) { /* storage may be disabled */ }
})();
