"""Language: a best guess at the message's language, the notice for unsupported languages, and
the crisis preface in the patient's language."""

from __future__ import annotations

import re
from typing import Iterable

_STOPWORDS: dict[str, set[str]] = {
    "en": set("the and is my i to it of in that have with for you not this me when what how do are was can so but just "
              "at on be i'm it's don't sweat sweating hands feet really very".split()),
    "es": set("el la los las que y en un una mis mi es por con para me muy lo se tengo qué cómo pero manos sudo sudan "
              "quiero estoy del al mucho cuando también porque hay puedo".split()),
    "fr": set("le la les des et est je un une mon mes ne pas que qui pour avec très mains transpire suis ai ça quand "
              "moi du au c'est j'ai beaucoup aussi mais ou".split()),
    "de": set("der die das und ist ich nicht mein meine ein eine mit zu was wie sehr hände schwitze habe bin auch wenn "
              "mich mir den dem es immer aber oder".split()),
    "it": set("il lo gli di che è un una non mi sono ho per con molto mani sudo voglio come cosa ma quando anche "
              "della sempre".split()),
    "pt": set("o os as que é um uma não meu minha minhas eu com para muito mãos suo estou tenho quero como mas você "
              "quando também isso".split()),
    "nl": set("de het een en is ik niet mijn met van voor heel zweet handen wil dat op te zijn maar ook wat hoe "
              "erg".split()),
    "pl": set("w nie się jest mi mam bardzo co jak to na z że dłonie pocą chcę już czy".split()),
    "tr": set("ve bir bu çok ne ben benim için ile değil ellerim terliyor istiyorum yapmalıyım artık mı".split()),
    "sv": set("jag och är inte det en att min mina med för mycket händer svettas vill".split()),
}
_DISTINCT = {
    "es": re.compile(r"[ñ¿¡]|\b(?:qué|cómo|mucho|tengo|quiero|estoy|sudo|sudan|manos)\b", re.I),
    "fr": re.compile(r"[çœ]|\b(?:je|j'|mes|très|transpire|c'est|ça)\b", re.I),
    "de": re.compile(r"[ß]|\b(?:ich|nicht|hände|schwitze|sehr|meine)\b", re.I),
    "it": re.compile(r"\b(?:sono|voglio|molto|mani|sudo|anche)\b", re.I),
    "pt": re.compile(r"[ãõ]|\b(?:não|você|mãos|estou|muito)\b", re.I),
    "nl": re.compile(r"\b(?:ik|niet|mijn|heel|zweet|handen)\b", re.I),
    "pl": re.compile(r"[ąćęłńśźż]", re.I),
    "tr": re.compile(r"[ğış]", re.I),
    "sv": re.compile(r"\b(?:jag|inte|mycket|svettas)\b", re.I),
}
_SCRIPTS = [
    ("ja", re.compile(r"[\u3040-\u30ff]")),
    ("ko", re.compile(r"[\uac00-\ud7af]")),
    ("zh", re.compile(r"[\u4e00-\u9fff]")),
    ("ru", re.compile(r"[\u0400-\u04ff]")),  # Cyrillic: told apart from Ukrainian below
    ("ar", re.compile(r"[\u0600-\u06ff]")),  # Arabic script: told apart from Persian and Urdu below
    ("he", re.compile(r"[\u0590-\u05ff]")),
    ("el", re.compile(r"[\u0370-\u03ff]")),
    # Devanagari is reported as Hindi: Marathi and Nepali use the same script and mostly the same
    # letters, and a short message does not reliably tell them apart by script.
    ("hi", re.compile(r"[\u0900-\u097f]")),
    # Bengali script is reported as Bengali (Assamese shares it, bar a few letters).
    ("bn", re.compile(r"[\u0980-\u09ff]")),
    ("th", re.compile(r"[\u0e00-\u0e7f]")),
]
# Arabic script: letters Urdu has and Persian does not (ٹ ڈ ڑ ں ے ہ ھ, and ۓ), letters Persian and
# Urdu both use and standard Arabic does not (پ چ ژ گ, Persian/Urdu yeh ی and keheh ک), and letters
# that mark Arabic (Arabic yeh ي, kaf ك, ta marbuta ة, alef maksura ى). Persian or Urdu on two such
# letters that outnumber the Arabic marks, or on one with no Arabic mark at all (a short greeting);
# Arabic when unsure (a loanword with پ in an Arabic sentence stays Arabic). On the training corpus
# no Arabic message is read as Persian or Urdu. Other languages in the script (Pashto, Sindhi, Kurdish)
# come out as whichever they resemble.
# Cyrillic: Ukrainian letters (і ї є ґ) against Russian-only ones (ы э ъ ё). Counting the Ukrainian
# letters against all letters, as this once did, never reached the script threshold in real text.
_UKRAINIAN = re.compile(r"[іїєґІЇЄҐ]")
_RUSSIAN_ONLY = re.compile(r"[ыэъёЫЭЪЁ]")
_URDU_ONLY = re.compile(r"[\u0679\u0688\u0691\u06ba\u06d2\u06d3\u06c1\u06be]")
_PERSIAN_URDU = re.compile(r"[\u067e\u0686\u0698\u06af\u06cc\u06a9]")
_ARABIC_ONLY = re.compile(r"[\u064a\u0643\u0629\u0649]")


def _arabic_script_language(text: str) -> str:
    urdu, shared, arabic = (len(r.findall(text)) for r in (_URDU_ONLY, _PERSIAN_URDU, _ARABIC_ONLY))
    evidence = urdu + shared
    if evidence == 0 or evidence <= arabic or (evidence == 1 and arabic):
        return "ar"
    return "ur" if urdu else "fa"

_TOKEN = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)
_CJK = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff\uac00-\ud7af\u0e00-\u0e7f]")


def detect_language(text: str, default: str = "en") -> str:
    """A best guess at the message's language (ISO 639-1); ``default`` when unsure.

    Non-Latin scripts are recognised by script; Latin-script languages by common words. Short
    or mixed messages fall back to ``default`` so that a patient writing "hola, my hands sweat"
    is answered rather than turned away.
    """
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return default
    for code, script in _SCRIPTS:
        count = len(script.findall(text))
        if count and count >= 0.3 * len(letters):
            if code == "ar":
                return _arabic_script_language(text)
            if code == "ru" and len(_UKRAINIAN.findall(text)) > len(_RUSSIAN_ONLY.findall(text)):
                return "uk"
            return code
    tokens = [t.casefold() for t in _TOKEN.findall(text)]
    if not tokens:
        return default
    scores = {lang: sum(t in words for t in tokens) for lang, words in _STOPWORDS.items()}
    en = scores.pop("en")
    best, hits = max(scores.items(), key=lambda kv: kv[1])
    if hits >= 2 and hits > en:
        return best
    if hits >= 1 and en == 0 and len(tokens) <= 6 and _DISTINCT[best].search(text):
        return best
    return default


LANGUAGE_NAMES = {
    "en": "English", "es": "español", "fr": "français", "de": "Deutsch", "it": "italiano", "pt": "português",
    "nl": "Nederlands", "pl": "polski", "tr": "Türkçe", "sv": "svenska", "ru": "русский", "uk": "українська",
    "ar": "العربية", "he": "עברית", "el": "Ελληνικά", "zh": "中文", "ja": "日本語", "ko": "한국어", "hi": "हिन्दी",
    "th": "ไทย", "bn": "বাংলা", "fa": "فارسی", "ur": "اردو",
}

# "I can only answer in {supported}": in the patient's language, with the red-flag and emergency
# advice that a reply would have carried. {supported} is filled with the supported languages.
LANGUAGE_NOTICES = {
    "en": ("Sorry, I can only answer in {supported} at the moment. You are welcome to write your question in "
           "{supported}, or to ask a doctor or pharmacist near you. If your sweating started recently, is on one side "
           "only, happens at night, or comes with fever, weight loss or a racing heart, please see a doctor. If you "
           "are in danger or thinking of harming yourself, call your local emergency number now."),
    "es": ("Lo siento, por ahora solo puedo responder en {supported}. Puedes escribir tu pregunta en {supported} o "
           "consultar a un médico o farmacéutico cerca de ti. Si el sudor empezó hace poco, es de un solo lado, "
           "aparece por la noche o viene con fiebre, pérdida de peso o el corazón acelerado, consulta a un médico. "
           "Si estás en peligro o piensas en hacerte daño, llama ahora al número de emergencias de tu país."),
    "fr": ("Désolé, je ne peux répondre qu'en {supported} pour le moment. Vous pouvez écrire votre question en "
           "{supported}, ou demander conseil à un médecin ou un pharmacien près de chez vous. Si la transpiration a "
           "commencé récemment, ne touche qu'un côté, survient la nuit ou s'accompagne de fièvre, de perte de poids ou "
           "de palpitations, consultez un médecin. Si vous êtes en danger ou pensez à vous faire du mal, appelez "
           "immédiatement le numéro d'urgence de votre pays."),
    "de": ("Entschuldigung, ich kann im Moment nur auf {supported} antworten. Sie können Ihre Frage auf {supported} "
           "stellen oder eine Ärztin, einen Arzt oder eine Apotheke in Ihrer Nähe fragen. Wenn das Schwitzen erst "
           "vor Kurzem begonnen hat, nur eine Seite betrifft, nachts auftritt oder mit Fieber, Gewichtsverlust oder "
           "Herzrasen einhergeht, gehen Sie bitte zum Arzt. Wenn Sie in Gefahr sind oder daran denken, sich etwas "
           "anzutun, rufen Sie jetzt den Notruf Ihres Landes an."),
    "it": ("Mi dispiace, per ora posso rispondere solo in {supported}. Puoi scrivere la tua domanda in {supported} "
           "oppure chiedere a un medico o a un farmacista vicino a te. Se la sudorazione è iniziata da poco, riguarda "
           "un solo lato, compare di notte o si accompagna a febbre, perdita di peso o battito accelerato, rivolgiti a "
           "un medico. Se sei in pericolo o pensi di farti del male, chiama subito il numero di emergenza del tuo paese."),
    "pt": ("Desculpe, por enquanto só consigo responder em {supported}. Pode escrever a sua pergunta em {supported} "
           "ou falar com um médico ou farmacêutico perto de si. Se o suor começou há pouco tempo, é só de um lado, "
           "acontece à noite ou vem com febre, perda de peso ou coração acelerado, consulte um médico. Se estiver em "
           "perigo ou a pensar em fazer mal a si próprio, ligue já para o número de emergência do seu país."),
    "nl": ("Sorry, ik kan op dit moment alleen in het {supported} antwoorden. Je kunt je vraag in het {supported} "
           "stellen of een arts of apotheker bij jou in de buurt vragen. Als het zweten pas kort geleden begon, aan "
           "één kant zit, 's nachts optreedt of samengaat met koorts, gewichtsverlies of hartkloppingen, ga dan naar "
           "een arts. Als je in gevaar bent of eraan denkt jezelf iets aan te doen, bel dan nu het alarmnummer."),
    "pl": ("Przepraszam, na razie mogę odpowiadać tylko po angielsku ({supported}). Możesz zadać pytanie po "
           "angielsku albo zapytać lekarza lub farmaceutę w pobliżu. Jeśli pocenie zaczęło się niedawno, dotyczy "
           "jednej strony, pojawia się w nocy albo towarzyszy mu gorączka, utrata wagi lub kołatanie serca, idź do "
           "lekarza. Jeśli jesteś w niebezpieczeństwie albo myślisz o zrobieniu sobie krzywdy, zadzwoń teraz pod "
           "numer alarmowy 112."),
    "tr": ("Üzgünüm, şu anda yalnızca {supported} yanıt verebiliyorum. Sorunuzu {supported} yazabilir ya da "
           "yakınınızdaki bir doktora veya eczacıya danışabilirsiniz. Terleme yakın zamanda başladıysa, tek taraflıysa, "
           "geceleri oluyorsa ya da ateş, kilo kaybı veya çarpıntıyla birlikteyse lütfen bir doktora görünün. Tehlikedeyseniz "
           "ya da kendinize zarar vermeyi düşünüyorsanız hemen acil yardım numarasını (112) arayın."),
    "sv": ("Tyvärr kan jag just nu bara svara på {supported}. Du kan skriva din fråga på {supported} eller fråga en "
           "läkare eller ett apotek nära dig. Om svettningarna började nyligen, bara sitter på ena sidan, kommer på "
           "natten eller följs av feber, viktnedgång eller hjärtklappning, sök läkare. Om du är i fara eller tänker "
           "på att skada dig själv, ring 112 nu."),
    "ru": ("Извините, пока я могу отвечать только на английском языке ({supported}). Вы можете написать вопрос "
           "по-английски или обратиться к врачу или фармацевту. Если потливость появилась недавно, только с одной "
           "стороны, ночью или вместе с температурой, потерей веса или учащённым сердцебиением, обратитесь к врачу. "
           "Если вы в опасности или думаете причинить себе вред, сейчас же позвоните в экстренную службу."),
    "uk": ("Вибачте, поки що я можу відповідати лише англійською ({supported}). Ви можете написати запитання "
           "англійською або звернутися до лікаря чи фармацевта. Якщо пітливість з'явилася нещодавно, лише з одного "
           "боку, вночі або разом із температурою, втратою ваги чи прискореним серцебиттям, зверніться до лікаря. "
           "Якщо ви в небезпеці або думаєте заподіяти собі шкоду, негайно зателефонуйте на номер екстреної допомоги."),
    "ar": ("عذرًا، لا أستطيع حاليًا الرد إلا باللغة الإنجليزية ({supported}). يمكنك كتابة سؤالك بالإنجليزية أو سؤال "
           "طبيب أو صيدلي قريب منك. إذا بدأ التعرّق مؤخرًا، أو كان في جهة واحدة فقط، أو يحدث ليلًا، أو يصاحبه حمّى أو "
           "فقدان وزن أو تسارع في ضربات القلب، فيرجى مراجعة الطبيب. إذا كنت في خطر أو تفكر في إيذاء نفسك، فاتصل "
           "برقم الطوارئ في بلدك الآن."),
    "zh": ("抱歉，我目前只能用英语（{supported}）回答。你可以用英语提问，或向附近的医生或药剂师咨询。如果出汗是最近才开始的、"
           "只在身体一侧、在夜间出现，或伴有发烧、体重下降或心跳加快，请去看医生。如果你身处危险或有伤害自己的念头，"
           "请立即拨打当地的紧急电话。"),
    "ja": ("申し訳ありませんが、現在は英語（{supported}）でのみお答えできます。英語でご質問いただくか、お近くの医師または"
           "薬剤師にご相談ください。汗が最近始まった、片側だけ、夜間に出る、または発熱・体重減少・動悸を伴う場合は、"
           "医師の診察を受けてください。危険な状態にある場合や自分を傷つけたいと考えている場合は、すぐに緊急通報番号に"
           "電話してください。"),
    "ko": ("죄송합니다. 지금은 영어({supported})로만 답변할 수 있습니다. 영어로 질문하시거나 가까운 의사나 약사와 "
           "상담하세요. 땀이 최근에 시작되었거나, 한쪽에만 나거나, 밤에 나거나, 열·체중 감소·두근거림이 함께 있다면 "
           "의사의 진료를 받으세요. 위험한 상황이거나 스스로를 해칠 생각이 든다면 지금 바로 응급 번호로 전화하세요."),
    "hi": ("क्षमा करें, अभी मैं केवल अंग्रेज़ी ({supported}) में उत्तर दे सकता हूँ। आप अपना प्रश्न अंग्रेज़ी में लिख सकते हैं या "
           "पास के डॉक्टर या फ़ार्मासिस्ट से पूछ सकते हैं। अगर पसीना हाल ही में शुरू हुआ है, केवल एक तरफ़ है, रात में आता है, "
           "या बुख़ार, वज़न घटने या तेज़ धड़कन के साथ है, तो डॉक्टर को दिखाएँ। अगर आप ख़तरे में हैं या ख़ुद को नुकसान "
           "पहुँचाने के बारे में सोच रहे हैं, तो अभी अपने देश के आपातकालीन नंबर पर कॉल करें।"),
    "he": ("סליחה, כרגע אפשר לקבל ממני תשובות רק בשפות האלה: {supported}. אפשר לכתוב את השאלה באחת מהן, או לפנות "
           "לרופא או לרוקח בקרבת מקום. אם ההזעה התחילה לאחרונה, מופיעה רק בצד אחד, מופיעה בלילה, או מלווה בחום, "
           "בירידה במשקל או בדופק מהיר, יש לפנות לרופא. אם יש סכנה או מחשבות על פגיעה בעצמך, יש להתקשר עכשיו "
           "למספר החירום המקומי."),
    "el": ("Λυπάμαι, προς το παρόν μπορώ να απαντήσω μόνο σε αυτές τις γλώσσες: {supported}. Μπορείτε να γράψετε "
           "την ερώτησή σας σε μία από αυτές ή να ρωτήσετε έναν γιατρό ή φαρμακοποιό κοντά σας. Αν η εφίδρωση "
           "ξεκίνησε πρόσφατα, είναι μόνο στη μία πλευρά, εμφανίζεται τη νύχτα ή συνοδεύεται από πυρετό, απώλεια "
           "βάρους ή ταχυπαλμία, επισκεφθείτε γιατρό. Αν κινδυνεύετε ή σκέφτεστε να βλάψετε τον εαυτό σας, καλέστε "
           "τώρα τον αριθμό έκτακτης ανάγκης της χώρας σας."),
    "th": ("ขออภัย ขณะนี้ฉันตอบได้เฉพาะภาษาต่อไปนี้เท่านั้น: {supported} คุณสามารถเขียนคำถามเป็นภาษาเหล่านี้ "
           "หรือสอบถามแพทย์หรือเภสัชกรใกล้บ้านคุณ หากเหงื่อออกเพิ่งเริ่มเมื่อไม่นานมานี้ ออกเพียงข้างเดียว "
           "ออกตอนกลางคืน หรือมีไข้ น้ำหนักลด หรือใจสั่นร่วมด้วย โปรดไปพบแพทย์ หากคุณอยู่ในอันตราย"
           "หรือคิดจะทำร้ายตัวเอง โปรดโทรหาหมายเลขฉุกเฉินในพื้นที่ของคุณทันที"),
    "bn": ("দুঃখিত, এই মুহূর্তে আমি কেবল এই ভাষাগুলোতে উত্তর দিতে পারি: {supported}। আপনি এর কোনো একটি ভাষায় "
           "প্রশ্ন লিখতে পারেন, অথবা আপনার কাছাকাছি কোনো ডাক্তার বা ফার্মাসিস্টকে জিজ্ঞেস করতে পারেন। যদি ঘাম "
           "সম্প্রতি শুরু হয়ে থাকে, শুধু এক পাশে হয়, রাতে হয়, অথবা তার সঙ্গে জ্বর, ওজন কমে যাওয়া বা বুক ধড়ফড় "
           "থাকে, তাহলে একজন ডাক্তার দেখান। আপনি যদি বিপদে থাকেন বা নিজের ক্ষতি করার কথা ভাবেন, তাহলে এখনই "
           "আপনার এলাকার জরুরি নম্বরে ফোন করুন।"),
    "fa": ("متأسفم، در حال حاضر فقط می‌توانم به این زبان‌ها پاسخ بدهم: {supported}. می‌توانید پرسش خود را به یکی از "
           "این زبان‌ها بنویسید، یا از یک پزشک یا داروساز نزدیک خود بپرسید. اگر تعریق به‌تازگی شروع شده، فقط در یک "
           "طرف بدن است، شب‌ها رخ می‌دهد، یا با تب، کاهش وزن یا تپش قلب همراه است، لطفاً به پزشک مراجعه کنید. اگر "
           "در خطر هستید یا به آسیب زدن به خود فکر می‌کنید، همین حالا با شماره اورژانس محلی تماس بگیرید."),
    "ur": ("معذرت، اس وقت میں صرف ان زبانوں میں جواب دے سکتا ہوں: {supported}۔ آپ اپنا سوال ان میں سے کسی ایک "
           "زبان میں لکھ سکتے ہیں، یا اپنے قریب کسی ڈاکٹر یا فارماسسٹ سے پوچھ سکتے ہیں۔ اگر پسینہ حال ہی میں شروع "
           "ہوا ہے، صرف ایک طرف آتا ہے، رات کو آتا ہے، یا اس کے ساتھ بخار، وزن میں کمی یا دل کی تیز دھڑکن ہے، تو "
           "براہ کرم ڈاکٹر کو دکھائیں۔ اگر آپ خطرے میں ہیں یا خود کو نقصان پہنچانے کا سوچ رہے ہیں، تو ابھی اپنے "
           "مقامی ایمرجنسی نمبر پر کال کریں۔"),
}


# Put before the (English) crisis message when the patient wrote in another language.
CRISIS_PREFACES = {
    "es": "No estás solo/a. Por favor, contacta ahora con uno de estos servicios o llama al número de emergencias de tu país:",
    "fr": "Vous n'êtes pas seul·e. Contactez dès maintenant l'un de ces services, ou appelez le numéro d'urgence de votre pays :",
    "de": "Sie sind nicht allein. Bitte wenden Sie sich jetzt an einen dieser Dienste oder rufen Sie den Notruf Ihres Landes an:",
    "it": "Non sei solo/a. Contatta subito uno di questi servizi o chiama il numero di emergenza del tuo paese:",
    "pt": "Não está sozinho/a. Contacte agora um destes serviços ou ligue para o número de emergência do seu país:",
    "nl": "Je staat er niet alleen voor. Neem nu contact op met een van deze diensten of bel het alarmnummer van je land:",
    "pl": "Nie jesteś sam/sama. Skontaktuj się teraz z jedną z tych usług albo zadzwoń pod numer alarmowy 112:",
    "tr": "Yalnız değilsiniz. Lütfen hemen bu hizmetlerden birine ulaşın ya da acil yardım numarasını (112) arayın:",
    "sv": "Du är inte ensam. Kontakta någon av de här tjänsterna nu, eller ring 112:",
    "ru": "Вы не одни. Пожалуйста, прямо сейчас обратитесь в одну из этих служб или позвоните в экстренную службу:",
    "uk": "Ви не самі. Будь ласка, просто зараз зверніться до однієї з цих служб або зателефонуйте на номер екстреної допомоги:",
    "ar": "لست وحدك. يرجى التواصل الآن مع إحدى هذه الخدمات أو الاتصال برقم الطوارئ في بلدك:",
    "zh": "你并不孤单。请现在就联系以下服务之一，或拨打当地的紧急电话：",
    "ja": "あなたは一人ではありません。今すぐ次の窓口のいずれかに連絡するか、お住まいの国の緊急通報番号に電話してください：",
    "ko": "당신은 혼자가 아닙니다. 지금 바로 아래 기관 중 한 곳에 연락하거나 응급 번호로 전화하세요:",
    "hi": "आप अकेले नहीं हैं। कृपया अभी इनमें से किसी सेवा से संपर्क करें या अपने देश के आपातकालीन नंबर पर कॉल करें:",
    "he": "אינך לבד. יש לפנות עכשיו לאחד מהשירותים האלה, או להתקשר למספר החירום המקומי:",
    "el": "Δεν είστε μόνος/μόνη. Επικοινωνήστε τώρα με μία από αυτές τις υπηρεσίες ή καλέστε τον αριθμό έκτακτης ανάγκης της χώρας σας:",
    "th": "คุณไม่ได้อยู่คนเดียว โปรดติดต่อหนึ่งในบริการเหล่านี้ตอนนี้ หรือโทรหาหมายเลขฉุกเฉินในประเทศของคุณ:",
    "bn": "আপনি একা নন। অনুগ্রহ করে এখনই এই পরিষেবাগুলোর একটিতে যোগাযোগ করুন, অথবা আপনার দেশের জরুরি নম্বরে ফোন করুন:",
    "fa": "شما تنها نیستید. لطفاً همین حالا با یکی از این خدمات یا با شماره اورژانس کشور خود تماس بگیرید:",
    "ur": "آپ اکیلے نہیں ہیں۔ براہ کرم ابھی ان میں سے کسی ایک سروس سے رابطہ کریں یا اپنے ملک کے ایمرجنسی نمبر پر کال کریں:",
}


def crisis_text(message: str, language: str) -> str:
    """The pack's crisis message, with a preface in the patient's language when it is not English."""
    preface = CRISIS_PREFACES.get(language)
    return f"{preface}\n\n{message}" if preface else message


def language_notice(language: str, supported: Iterable[str]) -> str:
    names = [LANGUAGE_NAMES.get(code, code) for code in supported] or ["English"]
    template = LANGUAGE_NOTICES.get(language, LANGUAGE_NOTICES["en"])
    return template.format(supported=", ".join(names))
