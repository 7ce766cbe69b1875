"""Every string a person reads in the web UI, in English and Spanish.

Why a dict and not gettext: two languages, a few hundred strings, no build step and
no compiled ``.mo`` files to forget in a wheel; a test checks that both languages have
the same keys with the same ``{placeholders}``. Adding a language is adding one dict
here and its name to ``LANGUAGE_NAMES``.

Plurals: a key ``x`` with a count is looked up as ``x.one`` (n == 1) or ``x.other``;
English and Spanish both need no more forms than that.

Messages are formatted with ``str.format``: the templates escape the result, so a
parameter (a name typed by a member) can never become markup.

Which language: ``?lang=xx`` (stored in a cookie by the app), else the cookie, else
the browser's ``Accept-Language``, else English.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_LANGUAGE = "en"
LANGUAGE_NAMES: dict[str, str] = {"en": "English", "es": "Español"}


@dataclass(frozen=True, slots=True)
class Message:
    """A catalog key and its parameters, translated only when shown."""

    key: str
    params: Mapping[str, object] = field(default_factory=dict)


EN: dict[str, str] = {
    # -- frame -----------------------------------------------------------------
    "app.name": "Potluck",
    "skip": "Skip to the main content",
    "nav.label": "Sections",
    "nav.board": "Board",
    "nav.inventory": "Inventory",
    "nav.roster": "Roster",
    "nav.people": "People",
    "nav.sync": "Sync",
    "lang.label": "Language",
    "footer.you": "This device acts as {name} ({key}) in {group}.",
    "live.connecting": "Connecting…",
    "live.connected": "Live: changes show up by themselves.",
    "live.offline": "Not connected to Potluck on this device: what you see may be out of "
    "date. It updates when the connection is back.",
    "live.updated": "Updated with new changes.",
    "form.problem": "There is a problem",
    "form.error_prefix": "Error:",
    "form.nothing_saved": "Nothing was saved. Fix this and send the form again:",
    "form.optional": "optional",
    "form.choose": "Choose…",
    "form.none": "Not set",
    "form.save": "Save",
    # -- flash: what was saved ----------------------------------------------------
    "flash.saved": "Saved on this device.",
    "flash.offer_posted": "Offer posted.",
    "flash.need_posted": "Need posted.",
    "flash.claimed": "Claim made.",
    "flash.pledged": "Pledge made.",
    "flash.claim_confirmed": "Claim confirmed.",
    "flash.claim_declined": "Claim declined.",
    "flash.claim_released": "Claim released.",
    "flash.claim_fulfilled": "Claim marked done.",
    "flash.withdrawn": "Taken off the board.",
    "flash.stock_adjusted": "Stock change recorded.",
    "flash.stock_counted": "Count recorded.",
    "flash.item_added": "Item added.",
    "flash.location_added": "Place added.",
    "flash.shift_scheduled": "Shift scheduled.",
    "flash.signed_up": "You are signed up.",
    "flash.shift_withdrawn": "You withdrew from the shift.",
    "flash.hours_recorded": "Hours recorded.",
    "flash.role_added": "Role added.",
    "flash.role_assigned": "Role given.",
    # -- after a flash: how many connected peers have what was saved ----------------
    "share.none": "Not on any other device yet.",
    "share.one": "Shared with {n} peer.",
    "share.other": "Shared with {n} peers.",
    # -- errors beside fields ----------------------------------------------------
    "error.required": "Fill this in.",
    "error.too_long": "Too long: at most {max} characters (this has {n}).",
    "error.control": "This contains a character that cannot be saved (U+{code}).",
    "error.slug": "Use only small letters a-z, digits and '-', at most 40 characters, "
    "starting with a letter or a digit.",
    "error.whole_number": "Write a whole number, like 3.",
    "error.positive": "Write a whole number of 1 or more.",
    "error.non_negative": "Write a whole number of 0 or more.",
    "error.too_big": "That is too many: at most {max}.",
    "error.slots": "Write a number of places from 1 to {max}.",
    "error.hours": "Write a number of hours above 0 and at most {max}.",
    "error.number": "Write a number, like 2 or 2.5.",
    "error.choice": "Choose one of the options.",
    "error.date": "Write a date like 2026-12-01.",
    "error.time": "Write a time like 09:00.",
    "error.end_before_start": "The end must be after the start.",
    "error.unknown_item": "There is no item '{slug}' on this device. Add it under Inventory first.",
    "error.unknown_location": "There is no place '{slug}' on this device. Add it under "
    "Inventory first.",
    "error.unknown_role": "There is no role '{slug}' on this device. Add it under People first.",
    "error.unknown_member": "There is no member like that on this device.",
    "error.gone_entry": "That offer or need is no longer on the board.",
    "error.gone_claim": "That claim is not on this device's board.",
    "error.gone_shift": "That shift is not on this device's roster.",
    "error.not_yours": "Only the person who posted it can take it off the board.",
    "error.node": "{text}",
    # -- error pages -------------------------------------------------------------
    "page.csrf.title": "This form is out of date",
    "page.csrf.text": "Nothing was saved. Go back, reload the page and send the form again.",
    "page.auth.title": "This page needs its access code",
    "page.auth.text": "Open the link with the access code that 'potluck serve' printed "
    "on the device that runs Potluck.",
    "page.host.title": "Wrong address",
    "page.host.text": "Open Potluck at http://127.0.0.1 or http://localhost on the "
    "device that runs it.",
    "page.not_found.title": "Not found",
    "page.not_found.text": "There is nothing at this address.",
    "page.too_large.title": "Too much to send",
    "page.too_large.text": "That form was too large. Nothing was saved.",
    "page.bad_request.title": "That did not work",
    "page.bad_request.text": "The page sent something this device cannot read. Nothing "
    "was saved. Go back and try again.",
    "page.back": "Back to the board",
    # -- time --------------------------------------------------------------------
    "time.just_now": "just now",
    "time.minutes_ago": "{n} min ago",
    "time.hours_ago": "{n} h ago",
    "time.day": "{weekday} {day} {month}",
    "time.day_year": "{weekday} {day} {month} {year}",
    "weekday.0": "Mon",
    "weekday.1": "Tue",
    "weekday.2": "Wed",
    "weekday.3": "Thu",
    "weekday.4": "Fri",
    "weekday.5": "Sat",
    "weekday.6": "Sun",
    "month.1": "Jan",
    "month.2": "Feb",
    "month.3": "Mar",
    "month.4": "Apr",
    "month.5": "May",
    "month.6": "Jun",
    "month.7": "Jul",
    "month.8": "Aug",
    "month.9": "Sep",
    "month.10": "Oct",
    "month.11": "Nov",
    "month.12": "Dec",
    # -- board -------------------------------------------------------------------
    "board.title": "Board",
    "board.intro": "What people in the group offer and need. Needs come most urgent "
    "first; within that, newest first.",
    "board.needs": "Needs",
    "board.offers": "Offers",
    "board.no_needs": "No open needs.",
    "board.no_offers": "No open offers.",
    "board.post_offer": "Post an offer",
    "board.post_need": "Post a need",
    "board.offer_button": "Post the offer",
    "board.need_button": "Post the need",
    "board.posted_by": "{name}, {when}",
    "board.you": "you",
    "board.unknown_member": "someone not yet known here",
    "board.where": "at {place}",
    "board.until": "until {date}",
    "board.need_by": "needed by {date}",
    "board.offer_numbers": "{quantity} offered, {claimed} claimed, {remaining} left",
    "board.need_numbers": "{quantity} needed, {claimed} pledged, {remaining} to go",
    "board.no_quantity_offer": "No amount given; {claimed} claimed",
    "board.no_quantity_need": "No amount given; {claimed} pledged",
    "board.over_offer": "Over-claimed: {claimed} claimed but only {quantity} offered.",
    "board.over_need": "Over-pledged: {claimed} pledged but only {quantity} needed.",
    "board.decides_you": "You decide: confirm or decline the claims marked “needs a decision”.",
    "board.decides_other": "{name} decides who gets it.",
    "board.claims": "Claims",
    "board.claim_qty": "How many do you want?",
    "board.pledge_qty": "How many can you give?",
    "board.claim": "Claim",
    "board.pledge": "Pledge",
    "board.withdraw": "Take off the board",
    "urgency.low": "Low",
    "urgency.normal": "Normal",
    "urgency.urgent": "Urgent",
    "claim.by": "{name}: {quantity}",
    "claim.status.pending": "waiting for a decision",
    "claim.status.confirmed": "confirmed",
    "claim.status.declined": "declined",
    "claim.status.released": "released",
    "claim.status.fulfilled": "done",
    "claim.flag.over": "beyond what is available",
    "claim.flag.needs-decision": "needs a decision",
    "claim.confirm": "Confirm",
    "claim.decline": "Decline",
    "claim.release": "Release",
    "claim.fulfil": "Mark done",
    "field.title": "What is it?",
    "field.title.offer_hint": "For example: 10 tins of beans, a lift to the clinic.",
    "field.title.need_hint": "For example: nappies size 4, someone to fix a bike.",
    "field.category": "Category",
    "field.item": "Stocked item",
    "field.quantity": "How many",
    "field.location": "Where",
    "field.until": "Available until",
    "field.urgency": "How urgent",
    "field.by": "Needed by",
    # -- inventory -----------------------------------------------------------------
    "inventory.title": "Inventory",
    "inventory.intro": "What is on hand at each place. “Expiring soon” means within {days} days.",
    "inventory.expiring.one": "{n} item expiring soon",
    "inventory.expiring.other": "{n} items expiring soon",
    "inventory.negative.one": "{n} item below zero: count it again",
    "inventory.negative.other": "{n} items below zero: count them again",
    "inventory.recount.one": "{n} item to count again",
    "inventory.recount.other": "{n} items to count again",
    "inventory.empty": "Nothing is stocked yet.",
    "inventory.col.item": "Item",
    "inventory.col.on_hand": "On hand",
    "inventory.col.expires": "Expires",
    "inventory.col.status": "Status",
    "inventory.amount": "{n} {unit}",
    "flag.expiring": "expiring soon",
    "flag.expired": "expired",
    "flag.negative": "below zero",
    "flag.recount": "count again",
    "inventory.adjust": "Stock in or out",
    "inventory.adjust_button": "Record the change",
    "inventory.count": "Record a count",
    "inventory.count_button": "Record the count",
    "inventory.add_item": "Add an item",
    "inventory.add_location": "Add a place",
    "field.amount": "How many",
    "field.reason": "What happened",
    "field.expires": "Best before",
    "field.count": "How many are there now",
    "field.slug": "Short name",
    "field.slug_hint": "Small letters a-z, digits and '-', like church-pantry.",
    "field.name": "Name",
    "field.unit": "Unit",
    "field.unit_hint": "What one of it is: can, kg, pack.",
    "field.storage": "Storage",
    "field.kind": "Kind of place",
    "reason.donation": "Came in (donation)",
    "reason.distribution": "Went out (handed out)",
    "reason.spoilage": "Went out (spoiled or thrown away)",
    "storage.ambient": "Shelf",
    "storage.fridge": "Fridge",
    "storage.freezer": "Freezer",
    "kind.pantry": "Pantry",
    "kind.fridge": "Community fridge",
    "kind.kitchen": "Kitchen",
    "kind.home": "Someone's home",
    "kind.hub": "Hub",
    "kind.other": "Other",
    # -- roster --------------------------------------------------------------------
    "roster.title": "Roster",
    "roster.week": "Week {week}: {start} to {end}",
    "roster.prev": "Previous week",
    "roster.next": "Next week",
    "roster.this_week": "This week",
    "roster.no_shifts": "No shifts.",
    "roster.needs.one": "Needs {n} more person",
    "roster.needs.other": "Needs {n} more people",
    "roster.full": "Full",
    "roster.filled": "Places: {filled} of {slots} taken",
    "roster.over_filled": "Over-filled: {filled} signed up, {slots} needed. The last to "
    "sign up are marked “extra”: agree together who goes.",
    "roster.extra": "extra",
    "roster.nobody": "Nobody yet.",
    "roster.signup": "Sign up",
    "roster.signup_extra": "Sign up as extra",
    "roster.withdraw": "Withdraw",
    "roster.hours_title": "Hours in week {week}",
    "roster.no_hours": "No hours recorded for this week yet.",
    "roster.col.person": "Person",
    "roster.col.hours": "Hours",
    "roster.my_hours": "Hours I worked",
    "roster.record": "Record",
    "roster.schedule": "Schedule a shift",
    "roster.schedule_button": "Schedule the shift",
    "roster.time": "{start} to {end}",
    "field.role": "Role",
    "field.date": "Day",
    "field.start_time": "Starts at",
    "field.end_time": "Ends at",
    "field.slots": "How many people",
    "field.hours": "Hours",
    # -- people --------------------------------------------------------------------
    "people.title": "People and roles",
    "people.members": "Members",
    "people.roles": "Roles",
    "people.you": "you",
    "people.languages": "Speaks: {languages}",
    "people.holds": "Roles: {roles}",
    "people.hours_week": "{hours} h this week",
    "people.no_roles": "No roles yet.",
    "people.weekly": "{hours} h a week",
    "people.holders": "Held by: {names}",
    "people.nobody": "Nobody holds this role yet.",
    "people.until": "{name} until {date}",
    "people.add_role": "Add a role",
    "people.assign": "Give someone a role",
    "people.assign_button": "Give the role",
    "field.description": "What it involves",
    "field.weekly_hours": "Hours a week",
    "field.member": "Who",
    "field.role_until": "Until",
    # -- sync ----------------------------------------------------------------------
    "sync.title": "Sync",
    "sync.this_device": "This device",
    "sync.name": "Name",
    "sync.key": "Key",
    "sync.group": "Group",
    "sync.events": "Events in the log",
    "sync.peers": "Peers",
    "sync.not_syncing": "Not syncing yet.",
    "sync.start": "Start 'potluck serve' to sync.",
    "sync.no_peers": "No other devices known yet. Start 'potluck serve' on both devices to sync.",
    "sync.unknown_peer": "a device not yet known",
    "sync.connected": "connected",
    "sync.not_connected": "not connected",
    "sync.last_seen": "last seen {when}",
    "sync.never_seen": "never seen",
    "sync.lag": "{behind} of our events not there yet; {ahead} of theirs not here yet",
    "sync.found_label": "Found by",
    "sync.found.manual": "address typed in",
    "sync.found.invite": "invite",
    "sync.found.mdns": "same Wi-Fi",
    "sync.found.bundle": "file or USB stick",
    "sync.found.inbound": "it connected to us",
    "sync.address": "Address",
    "sync.error": "Last problem",
}

ES: dict[str, str] = {
    "app.name": "Potluck",
    "skip": "Saltar al contenido principal",
    "nav.label": "Secciones",
    "nav.board": "Tablón",
    "nav.inventory": "Inventario",
    "nav.roster": "Turnos",
    "nav.people": "Personas",
    "nav.sync": "Sincronizar",
    "lang.label": "Idioma",
    "footer.you": "Este dispositivo actúa como {name} ({key}) en {group}.",
    "live.connecting": "Conectando…",
    "live.connected": "En vivo: los cambios aparecen solos.",
    "live.offline": "Sin conexión con Potluck en este dispositivo: lo que ves puede estar "
    "desactualizado. Se actualizará cuando vuelva la conexión.",
    "live.updated": "Actualizado con cambios nuevos.",
    "form.problem": "Hay un problema",
    "form.error_prefix": "Error:",
    "form.nothing_saved": "No se guardó nada. Corrige esto y envía el formulario de nuevo:",
    "form.optional": "opcional",
    "form.choose": "Elige…",
    "form.none": "Sin indicar",
    "form.save": "Guardar",
    "flash.saved": "Guardado en este dispositivo.",
    "flash.offer_posted": "Oferta publicada.",
    "flash.need_posted": "Necesidad publicada.",
    "flash.claimed": "Pedido hecho.",
    "flash.pledged": "Compromiso hecho.",
    "flash.claim_confirmed": "Pedido confirmado.",
    "flash.claim_declined": "Pedido rechazado.",
    "flash.claim_released": "Pedido liberado.",
    "flash.claim_fulfilled": "Pedido marcado como hecho.",
    "flash.withdrawn": "Retirado del tablón.",
    "flash.stock_adjusted": "Cambio de existencias anotado.",
    "flash.stock_counted": "Recuento anotado.",
    "flash.item_added": "Artículo añadido.",
    "flash.location_added": "Lugar añadido.",
    "flash.shift_scheduled": "Turno programado.",
    "flash.signed_up": "Te has apuntado.",
    "flash.shift_withdrawn": "Te has retirado del turno.",
    "flash.hours_recorded": "Horas anotadas.",
    "flash.role_added": "Función añadida.",
    "flash.role_assigned": "Función asignada.",
    "share.none": "Todavía no está en ningún otro dispositivo.",
    "share.one": "Compartido con {n} dispositivo.",
    "share.other": "Compartido con {n} dispositivos.",
    "error.required": "Rellena este campo.",
    "error.too_long": "Demasiado largo: como máximo {max} caracteres (tiene {n}).",
    "error.control": "Contiene un carácter que no se puede guardar (U+{code}).",
    "error.slug": "Usa solo letras minúsculas a-z, cifras y '-', como máximo 40 "
    "caracteres, empezando por una letra o una cifra.",
    "error.whole_number": "Escribe un número entero, como 3.",
    "error.positive": "Escribe un número entero de 1 o más.",
    "error.non_negative": "Escribe un número entero de 0 o más.",
    "error.too_big": "Son demasiados: como máximo {max}.",
    "error.slots": "Escribe un número de plazas de 1 a {max}.",
    "error.hours": "Escribe un número de horas mayor que 0 y como máximo {max}.",
    "error.number": "Escribe un número, como 2 o 2.5.",
    "error.choice": "Elige una de las opciones.",
    "error.date": "Escribe una fecha como 2026-12-01.",
    "error.time": "Escribe una hora como 09:00.",
    "error.end_before_start": "El final tiene que ser después del comienzo.",
    "error.unknown_item": "No hay ningún artículo '{slug}' en este dispositivo. Añádelo "
    "primero en Inventario.",
    "error.unknown_location": "No hay ningún lugar '{slug}' en este dispositivo. Añádelo "
    "primero en Inventario.",
    "error.unknown_role": "No hay ninguna función '{slug}' en este dispositivo. Añádela "
    "primero en Personas.",
    "error.unknown_member": "No hay ningún miembro así en este dispositivo.",
    "error.gone_entry": "Esa oferta o necesidad ya no está en el tablón.",
    "error.gone_claim": "Ese pedido no está en el tablón de este dispositivo.",
    "error.gone_shift": "Ese turno no está en los turnos de este dispositivo.",
    "error.not_yours": "Solo quien lo publicó puede retirarlo del tablón.",
    "error.node": "{text}",
    "page.csrf.title": "Este formulario está desactualizado",
    "page.csrf.text": "No se guardó nada. Vuelve atrás, recarga la página y envía el "
    "formulario de nuevo.",
    "page.auth.title": "Esta página necesita su código de acceso",
    "page.auth.text": "Abre el enlace con el código de acceso que 'potluck serve' mostró "
    "en el dispositivo donde funciona Potluck.",
    "page.host.title": "Dirección equivocada",
    "page.host.text": "Abre Potluck en http://127.0.0.1 o http://localhost en el "
    "dispositivo donde funciona.",
    "page.not_found.title": "No encontrado",
    "page.not_found.text": "No hay nada en esta dirección.",
    "page.too_large.title": "Demasiado para enviar",
    "page.too_large.text": "Ese formulario era demasiado grande. No se guardó nada.",
    "page.bad_request.title": "Eso no funcionó",
    "page.bad_request.text": "La página envió algo que este dispositivo no puede leer. No "
    "se guardó nada. Vuelve atrás e inténtalo de nuevo.",
    "page.back": "Volver al tablón",
    "time.just_now": "ahora mismo",
    "time.minutes_ago": "hace {n} min",
    "time.hours_ago": "hace {n} h",
    "time.day": "{weekday} {day} {month}",
    "time.day_year": "{weekday} {day} {month} {year}",
    "weekday.0": "lun",
    "weekday.1": "mar",
    "weekday.2": "mié",
    "weekday.3": "jue",
    "weekday.4": "vie",
    "weekday.5": "sáb",
    "weekday.6": "dom",
    "month.1": "ene",
    "month.2": "feb",
    "month.3": "mar",
    "month.4": "abr",
    "month.5": "may",
    "month.6": "jun",
    "month.7": "jul",
    "month.8": "ago",
    "month.9": "sep",
    "month.10": "oct",
    "month.11": "nov",
    "month.12": "dic",
    "board.title": "Tablón",
    "board.intro": "Lo que la gente del grupo ofrece y necesita. Las necesidades más "
    "urgentes van primero; dentro de eso, las más nuevas.",
    "board.needs": "Necesidades",
    "board.offers": "Ofertas",
    "board.no_needs": "No hay necesidades abiertas.",
    "board.no_offers": "No hay ofertas abiertas.",
    "board.post_offer": "Publicar una oferta",
    "board.post_need": "Publicar una necesidad",
    "board.offer_button": "Publicar la oferta",
    "board.need_button": "Publicar la necesidad",
    "board.posted_by": "{name}, {when}",
    "board.you": "tú",
    "board.unknown_member": "alguien aún desconocido aquí",
    "board.where": "en {place}",
    "board.until": "hasta el {date}",
    "board.need_by": "para el {date}",
    "board.offer_numbers": "{quantity} ofrecidos, {claimed} pedidos, quedan {remaining}",
    "board.need_numbers": "{quantity} necesarios, {claimed} comprometidos, faltan {remaining}",
    "board.no_quantity_offer": "Sin cantidad; {claimed} pedidos",
    "board.no_quantity_need": "Sin cantidad; {claimed} comprometidos",
    "board.over_offer": "Pedido de más: {claimed} pedidos pero solo se ofrecen {quantity}.",
    "board.over_need": "Comprometido de más: {claimed} comprometidos pero solo se "
    "necesitan {quantity}.",
    "board.decides_you": "Decides tú: confirma o rechaza los pedidos marcados "
    "«necesita una decisión».",
    "board.decides_other": "{name} decide quién lo recibe.",
    "board.claims": "Pedidos",
    "board.claim_qty": "¿Cuántos quieres?",
    "board.pledge_qty": "¿Cuántos puedes dar?",
    "board.claim": "Pedir",
    "board.pledge": "Comprometerme",
    "board.withdraw": "Retirar del tablón",
    "urgency.low": "Baja",
    "urgency.normal": "Normal",
    "urgency.urgent": "Urgente",
    "claim.by": "{name}: {quantity}",
    "claim.status.pending": "esperando una decisión",
    "claim.status.confirmed": "confirmado",
    "claim.status.declined": "rechazado",
    "claim.status.released": "liberado",
    "claim.status.fulfilled": "hecho",
    "claim.flag.over": "más de lo disponible",
    "claim.flag.needs-decision": "necesita una decisión",
    "claim.confirm": "Confirmar",
    "claim.decline": "Rechazar",
    "claim.release": "Liberar",
    "claim.fulfil": "Marcar como hecho",
    "field.title": "¿Qué es?",
    "field.title.offer_hint": "Por ejemplo: 10 latas de alubias, llevar a alguien al "
    "centro de salud.",
    "field.title.need_hint": "Por ejemplo: pañales talla 4, alguien que arregle una bici.",
    "field.category": "Categoría",
    "field.item": "Artículo del inventario",
    "field.quantity": "Cuántos",
    "field.location": "Dónde",
    "field.until": "Disponible hasta",
    "field.urgency": "Urgencia",
    "field.by": "Necesario para",
    "inventory.title": "Inventario",
    "inventory.intro": "Lo que hay en cada lugar. «Caduca pronto» quiere decir en los "
    "próximos {days} días.",
    "inventory.expiring.one": "{n} artículo caduca pronto",
    "inventory.expiring.other": "{n} artículos caducan pronto",
    "inventory.negative.one": "{n} artículo bajo cero: vuelve a contarlo",
    "inventory.negative.other": "{n} artículos bajo cero: vuelve a contarlos",
    "inventory.recount.one": "{n} artículo por volver a contar",
    "inventory.recount.other": "{n} artículos por volver a contar",
    "inventory.empty": "Todavía no hay existencias.",
    "inventory.col.item": "Artículo",
    "inventory.col.on_hand": "Hay",
    "inventory.col.expires": "Caduca",
    "inventory.col.status": "Estado",
    "inventory.amount": "{n} {unit}",
    "flag.expiring": "caduca pronto",
    "flag.expired": "caducado",
    "flag.negative": "bajo cero",
    "flag.recount": "volver a contar",
    "inventory.adjust": "Entradas y salidas",
    "inventory.adjust_button": "Anotar el cambio",
    "inventory.count": "Anotar un recuento",
    "inventory.count_button": "Anotar el recuento",
    "inventory.add_item": "Añadir un artículo",
    "inventory.add_location": "Añadir un lugar",
    "field.amount": "Cuántos",
    "field.reason": "Qué pasó",
    "field.expires": "Consumir preferentemente antes del",
    "field.count": "Cuántos hay ahora",
    "field.slug": "Nombre corto",
    "field.slug_hint": "Letras minúsculas a-z, cifras y '-', como despensa-iglesia.",
    "field.name": "Nombre",
    "field.unit": "Unidad",
    "field.unit_hint": "Qué es uno: lata, kg, paquete.",
    "field.storage": "Conservación",
    "field.kind": "Tipo de lugar",
    "reason.donation": "Entró (donación)",
    "reason.distribution": "Salió (repartido)",
    "reason.spoilage": "Salió (estropeado o tirado)",
    "storage.ambient": "Estante",
    "storage.fridge": "Nevera",
    "storage.freezer": "Congelador",
    "kind.pantry": "Despensa",
    "kind.fridge": "Nevera comunitaria",
    "kind.kitchen": "Cocina",
    "kind.home": "Casa de alguien",
    "kind.hub": "Punto de reparto",
    "kind.other": "Otro",
    "roster.title": "Turnos",
    "roster.week": "Semana {week}: del {start} al {end}",
    "roster.prev": "Semana anterior",
    "roster.next": "Semana siguiente",
    "roster.this_week": "Esta semana",
    "roster.no_shifts": "No hay turnos.",
    "roster.needs.one": "Falta {n} persona",
    "roster.needs.other": "Faltan {n} personas",
    "roster.full": "Completo",
    "roster.filled": "Plazas: {filled} de {slots} ocupadas",
    "roster.over_filled": "Demasiada gente: {filled} apuntados, se necesitan {slots}. Los "
    "últimos en apuntarse están marcados «de más»: acordad entre "
    "vosotros quién va.",
    "roster.extra": "de más",
    "roster.nobody": "Nadie todavía.",
    "roster.signup": "Apuntarme",
    "roster.signup_extra": "Apuntarme de más",
    "roster.withdraw": "Retirarme",
    "roster.hours_title": "Horas de la semana {week}",
    "roster.no_hours": "Todavía no hay horas anotadas para esta semana.",
    "roster.col.person": "Persona",
    "roster.col.hours": "Horas",
    "roster.my_hours": "Horas que trabajé",
    "roster.record": "Anotar",
    "roster.schedule": "Programar un turno",
    "roster.schedule_button": "Programar el turno",
    "roster.time": "de {start} a {end}",
    "field.role": "Función",
    "field.date": "Día",
    "field.start_time": "Empieza a las",
    "field.end_time": "Termina a las",
    "field.slots": "Cuántas personas",
    "field.hours": "Horas",
    "people.title": "Personas y funciones",
    "people.members": "Miembros",
    "people.roles": "Funciones",
    "people.you": "tú",
    "people.languages": "Habla: {languages}",
    "people.holds": "Funciones: {roles}",
    "people.hours_week": "{hours} h esta semana",
    "people.no_roles": "Todavía no hay funciones.",
    "people.weekly": "{hours} h a la semana",
    "people.holders": "La tienen: {names}",
    "people.nobody": "Nadie tiene esta función todavía.",
    "people.until": "{name} hasta el {date}",
    "people.add_role": "Añadir una función",
    "people.assign": "Dar una función a alguien",
    "people.assign_button": "Dar la función",
    "field.description": "En qué consiste",
    "field.weekly_hours": "Horas a la semana",
    "field.member": "Quién",
    "field.role_until": "Hasta",
    "sync.title": "Sincronizar",
    "sync.this_device": "Este dispositivo",
    "sync.name": "Nombre",
    "sync.key": "Clave",
    "sync.group": "Grupo",
    "sync.events": "Eventos en el registro",
    "sync.peers": "Otros dispositivos",
    "sync.not_syncing": "Todavía no se sincroniza.",
    "sync.start": "Inicia 'potluck serve' para sincronizar.",
    "sync.no_peers": "Todavía no se conoce ningún otro dispositivo. Inicia 'potluck "
    "serve' en los dos dispositivos para sincronizar.",
    "sync.unknown_peer": "un dispositivo aún desconocido",
    "sync.connected": "conectado",
    "sync.not_connected": "sin conexión",
    "sync.last_seen": "visto por última vez {when}",
    "sync.never_seen": "nunca visto",
    "sync.lag": "{behind} de nuestros eventos aún no están allí; {ahead} de los suyos aún "
    "no están aquí",
    "sync.found_label": "Encontrado por",
    "sync.found.manual": "dirección escrita a mano",
    "sync.found.invite": "invitación",
    "sync.found.mdns": "la misma wifi",
    "sync.found.bundle": "archivo o memoria USB",
    "sync.found.inbound": "se conectó a nosotros",
    "sync.address": "Dirección",
    "sync.error": "Último problema",
}

CATALOG: dict[str, dict[str, str]] = {"en": EN, "es": ES}


class Translator:
    """The strings of one language: ``t("key", name=...)``, ``t.plural("key", n)``."""

    def __init__(self, language: str) -> None:
        self.language = language if language in CATALOG else DEFAULT_LANGUAGE
        self._strings = CATALOG[self.language]

    def __call__(self, key: str | Message, /, **params: object) -> str:
        if isinstance(key, Message):
            params = {**key.params, **params}
            key = key.key
        # A missing key shows itself (tests catch it) rather than breaking the page.
        text = self._strings.get(key) or EN.get(key) or key
        return text.format(**params) if params else text

    def plural(self, key: str, n: int, /, **params: object) -> str:
        return self(f"{key}.{'one' if n == 1 else 'other'}", n=n, **params)

    def day(self, value: datetime.date, *, year: bool = False) -> str:
        """'Mon 24 Nov' (with the year when asked)."""
        return self(
            "time.day_year" if year else "time.day",
            weekday=self(f"weekday.{value.weekday()}"),
            day=value.day,
            month=self(f"month.{value.month}"),
            year=value.year,
        )

    def date_text(self, iso: str | None, today: datetime.date) -> str:
        """A stored 'YYYY-MM-DD' as a short day; the year only when it is not this year."""
        if not iso:
            return ""
        try:
            value = datetime.date.fromisoformat(iso[:10])
        except ValueError:
            return iso
        return self.day(value, year=value.year != today.year)

    def ago(self, moment: datetime.datetime, now: datetime.datetime) -> str:
        """How long ago ``moment`` was, coarsely; a day when over a day ago."""
        seconds = (now - moment).total_seconds()
        if seconds < 60:
            return self("time.just_now")
        if seconds < 3600:
            return self("time.minutes_ago", n=int(seconds // 60))
        if seconds < 86400:
            return self("time.hours_ago", n=int(seconds // 3600))
        local = moment.astimezone()
        return self.day(local.date(), year=local.year != now.astimezone().year)


def negotiate(accept_language: str | None) -> str:
    """The best of our languages for an ``Accept-Language`` header (RFC 9110 §12.5.4)."""
    best, best_q = DEFAULT_LANGUAGE, -1.0
    for position, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        primary = tag.strip().lower().split("-")[0]
        if primary not in CATALOG:
            continue
        q = 1.0
        match = re.search(r"q\s*=\s*([0-9.]+)", params)
        if match:
            try:
                q = float(match.group(1))
            except ValueError:
                q = 0.0
        q -= position * 1e-6  # equal weights: the earlier one wins
        if q > best_q and q > 0:
            best, best_q = primary, q
    return best


# How the problems that eventlog/body.py raises read to a person. The body stays the one
# place that decides what is valid; this only rewords its English for the page.
_PROBLEMS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), key)
    for pattern, key in (
        (r"must not be empty|is missing", "error.required"),
        (r"must be at most (?P<max>\d+) characters, got (?P<n>\d+)", "error.too_long"),
        (r"must not contain control character U\+(?P<code>[0-9A-F]+)", "error.control"),
        (r"must be a slug", "error.slug"),
        (r"must be a positive integer", "error.positive"),
        (r"must be a non-negative integer", "error.non_negative"),
        (r"must be a whole number of slots from 1 to (?P<max>\d+)", "error.slots"),
        (r"must be a number of hours above 0 and at most (?P<max>\d+)", "error.hours"),
        (r"must be one of", "error.choice"),
        (r"must be a date|is not a calendar date", "error.date"),
        (r"must be a datetime|is not a calendar datetime", "error.time"),
        (r"must be after start", "error.end_before_start"),
    )
)


def body_problem(problem: str) -> Message:
    """The catalog message for a problem text of ``InvalidBody`` (English if unknown)."""
    for pattern, key in _PROBLEMS:
        match = pattern.search(problem)
        if match:
            return Message(key, match.groupdict())
    return Message("error.node", {"text": problem})
